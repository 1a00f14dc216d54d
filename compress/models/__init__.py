"""The HMR model zoo: `create_model(name, **overrides)`, `list_models()`, `parameter_split(model)`."""
from compress.models.hmr import HMR, IEFModel, SeedHMR, mean_params
from compress.models.zoo import create_model, list_models, parameter_split, register_model, regressor_parameters

__all__ = ["HMR", "IEFModel", "SeedHMR", "create_model", "list_models", "mean_params", "parameter_split",
           "register_model", "regressor_parameters"]
