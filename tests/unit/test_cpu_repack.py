"""GENGATE_CPU_REPACK: whether ggml repacks CPU weights is decided at run time, from the build and the host."""
from __future__ import annotations

import subprocess
import sys

import pytest

from common import settings as common_settings
from service.engines import llama
from service.settings import ServiceSettings


@pytest.mark.parametrize("setting, built, permitted, repack, why", [
    ("auto", False, False, True, "no AMX kernels"),
    ("auto", True, False, False, "does not permit AMX tiles"),
    ("auto", True, True, False, "PR 16315"),
    ("on", True, True, True, "forced on"),
    ("on", False, False, True, "forced on"),
    ("off", False, False, False, "forced off"),
])
def test_the_decision(setting, built, permitted, repack, why):
    decided, reason = llama.repack_weights(setting, built=built, permitted=permitted)
    assert decided is repack and why in reason


def test_forcing_it_where_tiles_are_refused_warns(caplog):
    assert llama.repack_weights("on", built=True, permitted=False)[0] is True
    assert "SIGILL" in caplog.text


def test_the_host_is_asked():
    """A CPU without AMX is never granted tiles; one with AMX may still be refused (a hypervisor that does not
    pass the tile state through, as on the Intel VM this project started on). Asking twice gives one answer."""
    permitted = llama.amx_permitted()
    if "amx_tile" not in open("/proc/cpuinfo").read():
        assert permitted is False
    child = subprocess.run([sys.executable, "-c", "from service.engines import llama; print(llama.amx_permitted())"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == str(permitted) and llama.amx_permitted() is permitted


def test_the_setting_takes_only_its_values():
    assert common_settings.load(ServiceSettings, [], {"GENGATE_CPU_REPACK": "off"}).cpu_repack == "off"
    with pytest.raises(SystemExit):
        common_settings.load(ServiceSettings, [], {"GENGATE_CPU_REPACK": "maybe"})
