"""Protocol constants shared by SMPL, data, losses and evaluation (SPIN's conventions; no torch here).

Facts from SPIN's `constants.py` and `models/smpl.py`; see ../shared/reference/spin_protocol.md sections 2-3.
"""

FOCAL_LENGTH = 5000.0
IMG_RES = 224  # SPIN's training/eval crop size; our code takes img_res as a parameter everywhere
IMG_NORM_MEAN = (0.485, 0.456, 0.406)
IMG_NORM_STD = (0.229, 0.224, 0.225)

NUM_SMPL_JOINTS = 24
NUM_VERTICES = 6890  # smplx picks extra joints by vertex id (up to 6787); SPIN's regressors are 17x6890, 9x6890
NPOSE_6D = NUM_SMPL_JOINTS * 6  # 144
N_ESTIMATE = NPOSE_6D + 10 + 3  # 157: the [pose, shape, cam] columns of fc1's input

OPENPOSE_JOINT_NAMES = [
    "OP Nose", "OP Neck", "OP RShoulder", "OP RElbow", "OP RWrist", "OP LShoulder", "OP LElbow", "OP LWrist",
    "OP MidHip", "OP RHip", "OP RKnee", "OP RAnkle", "OP LHip", "OP LKnee", "OP LAnkle", "OP REye", "OP LEye",
    "OP REar", "OP LEar", "OP LBigToe", "OP LSmallToe", "OP LHeel", "OP RBigToe", "OP RSmallToe", "OP RHeel",
]
GT_JOINT_NAMES = [
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle", "Right Wrist", "Right Elbow",
    "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist", "Neck (LSP)", "Top of Head (LSP)",
    "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)", "Jaw (H36M)", "Head (H36M)", "Nose", "Left Eye",
    "Right Eye", "Left Ear", "Right Ear",
]
JOINT_NAMES = OPENPOSE_JOINT_NAMES + GT_JOINT_NAMES  # 49

# Index into the 54 joints = 45 smplx SMPL joints (24 + 21 vertex-picked) + 9 rows of J_regressor_extra.
JOINT_MAP = [
    24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34,
    8, 5, 45, 46, 4, 7, 21, 19, 17, 16, 18, 20, 47, 48, 49, 50, 51, 52, 53, 24, 26, 25, 28, 27,
]

# smplx's default vertex ids for SMPL's extra joints (order of smplx's VertexJointSelector).
SMPL_EXTRA_VERTEX_IDS = {
    "nose": 332, "reye": 6260, "leye": 2800, "rear": 4071, "lear": 583,
    "LBigToe": 3216, "LSmallToe": 3226, "LHeel": 3387, "RBigToe": 6617, "RSmallToe": 6624, "RHeel": 6787,
}

H36M_TO_J17 = [6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10, 0, 7, 9]
H36M_TO_J14 = H36M_TO_J17[:14]
J24_TO_J17 = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 14, 16, 17]
J24_TO_J14 = J24_TO_J17[:14]

SMPL_JOINTS_FLIP_PERM = [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22]
SMPL_POSE_FLIP_PERM = [3 * i + k for i in SMPL_JOINTS_FLIP_PERM for k in range(3)]
J24_FLIP_PERM = [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18, 19, 21, 20, 23, 22]
J49_FLIP_PERM = [0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24, 19, 20, 21] + [
    25 + i for i in J24_FLIP_PERM
]

# SMPL kinematic tree (parent of each of the 24 joints; -1 for the root).
SMPL_PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
SMPL_JOINT_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2", "left_ankle",
    "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar", "right_collar", "head",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hand", "right_hand",
]

# The evaluation datasets, by the keys the CLI and JSON use, and their SPIN npz files.
EVAL_DATASETS = {
    "3dpw": "3dpw_test",
    "mpi-inf-3dhp": "mpi_inf_3dhp_valid",
    "h36m-p1": "h36m_valid_protocol1",
    "h36m-p2": "h36m_valid_protocol2",
    "lsp": "lsp_dataset_test",
}
# The training datasets (SPIN's MixedDataset names) and their npz files.
TRAIN_DATASETS = {
    "h36m": "h36m_train",
    "lsp-orig": "lsp_dataset_original_train",
    "mpii": "mpii_train",
    "lspet": "hr-lspet_train",
    "coco": "coco_2014_train",
    "mpi-inf-3dhp": "mpi_inf_3dhp_train",
}
# Image folder of each dataset under the data root (SPIN's config paths, relative).
IMAGE_FOLDERS = {
    "h36m": "h36m", "h36m-p1": "h36m", "h36m-p2": "h36m", "lsp": "lsp", "lsp-orig": "lsp_original",
    "mpii": "mpii", "coco": "coco", "lspet": "hr-lspet", "mpi-inf-3dhp": "mpi_inf_3dhp", "3dpw": "3dpw",
}
UPI_S1H_FOLDER = "upi-s1h"
SMPL_MEAN_PARAMS = "smpl_mean_params.npz"  # SPIN: data/smpl_mean_params.npz, the regressor's starting estimate
