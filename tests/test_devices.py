"""compress.devices.cpu_info / describe_cpu: the CPU model and the INT8 instruction sets from /proc/cpuinfo."""
from compress.devices import cpu_info, describe_cpu

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma bmi2

processor\t: 1
model name\t: something else
flags\t\t: avx512f avx512_vnni
"""
XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: avx avx2 avx512f avx512bw avx512_vnni amx_tile amx_int8
"""


def test_avx2_only_cpu_has_no_vnni():
    info = cpu_info(EPYC)  # only the first processor block counts
    assert info == {"model": "AMD EPYC", "int8_isa": ["avx2"], "vnni": False}
    assert describe_cpu(info) == "AMD EPYC; INT8 on avx2 (no VNNI)"


def test_vnni_and_amx_are_found_in_order():
    info = cpu_info(XEON)
    assert info["int8_isa"] == ["avx2", "avx512f", "avx512_vnni", "amx_int8"] and info["vnni"]
    assert describe_cpu(info) == "Intel(R) Xeon(R) Platinum 8480+; INT8 on amx_int8"


def test_unknown_cpu_says_so():
    info = cpu_info("")
    assert info["int8_isa"] == [] and not info["vnni"] and info["model"]
    assert describe_cpu(info).endswith("INT8 instructions unknown")
