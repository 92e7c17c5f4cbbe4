"""The memory monitor: CPU mode on this host, the simulated GPU, and NVML through a simulated driver."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from securellm_bridge.config import parse_text
from securellm_bridge.config.local import VramConfig
from securellm_bridge.errors import ConfigErrors, Unavailable
from securellm_bridge.local.vram import MIB, CpuReader, MemoryMonitor

from .daemon import ROOT


def nvml_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.mark.skipif(nvml_library_present(), reason="this host has an NVIDIA driver")
def test_without_a_driver_the_monitor_uses_system_ram() -> None:
    ballast_size = 64 * MIB

    async def go() -> None:
        monitor = MemoryMonitor(VramConfig())
        with pytest.raises(Unavailable, match="not taken a snapshot yet"):
            monitor.snapshot()
        dead = subprocess.Popen(["true"])
        dead.wait()
        monitor.register(os.getpid(), 0)
        monitor.register(dead.pid, 0)
        monitor.register("not-a-pid", 123)
        try:
            before = await monitor.refresh()
            assert before.mode == "cpu"
            assert before.reason == "no usable GPU (NVML: NVML Shared Library Not Found); using system RAM"
            assert before.devices == ()
            assert before.total_bytes == meminfo_kib("MemTotal") * 1024
            assert before.used_bytes + before.free_bytes == before.total_bytes
            assert 0 < before.free_bytes < before.total_bytes
            assert set(before.processes) == {os.getpid()}  # gone pids and names have no RSS
            ballast = bytearray(b"\x01") * ballast_size  # written, so resident
            after = await monitor.refresh()
            assert after.processes[os.getpid()] - before.processes[os.getpid()] >= ballast_size * 0.9
            assert monitor.snapshot() is after
            del ballast
            monitor.unregister(os.getpid())
            assert (await monitor.refresh()).processes == {}
        finally:
            await monitor.stop()

    asyncio.run(go())


@pytest.mark.skipif(not nvml_library_present(), reason="needs an NVIDIA driver")
def test_on_a_gpu_host_the_monitor_reads_nvml() -> None:
    async def go() -> None:
        monitor = MemoryMonitor(VramConfig())
        try:
            snap = await monitor.refresh()
        finally:
            await monitor.stop()
        assert snap.mode == "gpu", snap.reason
        assert snap.devices and snap.total_bytes == sum(d.total_bytes for d in snap.devices)
        assert all(d.used_bytes + d.free_bytes <= d.total_bytes for d in snap.devices)

    asyncio.run(go())


def test_cpu_reader_parses_proc(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text("MemTotal:       1000 kB\nMemFree:         300 kB\nHugePages_Total:       0\n")
    (tmp_path / "41").mkdir()
    (tmp_path / "41" / "status").write_text("Name:\tllama-server\nVmPeak:\t  9000 kB\nVmRSS:\t  2048 kB\n")
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "status").write_text("Name:\tzombie\nState:\tZ (zombie)\n")
    snap = CpuReader("test", proc=str(tmp_path)).read({41: 0, 42: 0, 43: 0})
    # No MemAvailable (kernels before 3.14): MemFree is what is free.
    assert (snap.total_bytes, snap.free_bytes, snap.used_bytes) == (1000 * 1024, 300 * 1024, 700 * 1024)
    assert snap.processes == {41: 2048 * 1024}


def test_simulated_gpu_reports_what_is_registered() -> None:
    async def go() -> None:
        monitor = MemoryMonitor(VramConfig(simulate_total_mib=8192))
        try:
            empty = await monitor.refresh()
            assert (empty.mode, empty.total_bytes, empty.used_bytes, empty.free_bytes) == \
                ("simulated", 8192 * MIB, 0, 8192 * MIB)
            assert empty.reason == "simulated GPU of 8192 MiB ([vram] simulate_total_mib)"
            monitor.register(4242, 3000 * MIB)
            monitor.register("other-app", 1000 * MIB)
            assert monitor.snapshot() is empty  # like a real GPU: seen at the next poll
            snap = await monitor.refresh()
            assert (snap.used_bytes, snap.free_bytes) == (4000 * MIB, 4192 * MIB)
            assert snap.processes == {4242: 3000 * MIB, "other-app": 1000 * MIB}
            assert snap.used_percent == pytest.approx(100 * 4000 / 8192)
            (device,) = snap.devices
            assert (device.index, device.total_bytes, device.used_bytes, device.free_bytes) == \
                (0, 8192 * MIB, 4000 * MIB, 4192 * MIB)
            assert device.processes == snap.processes
            monitor.register(4242, 5000 * MIB)  # registering again replaces
            monitor.register(7, 3000 * MIB)
            over = await monitor.refresh()
            assert (over.used_bytes, over.free_bytes) == (9000 * MIB, 0)
            monitor.unregister(4242)
            monitor.unregister("never-registered")
            assert (await monitor.refresh()).processes == {"other-app": 1000 * MIB, 7: 3000 * MIB}
            with pytest.raises(ValueError):
                monitor.register(1, -1)
        finally:
            await monitor.stop()

    asyncio.run(go())


def test_polling_keeps_the_snapshot_current() -> None:
    async def go() -> None:
        monitor = MemoryMonitor(VramConfig(simulate_total_mib=1024, polling_interval_seconds=0.01))
        monitor.start()
        try:
            monitor.register("model", 100 * MIB)
            for _ in range(1000):
                try:
                    if monitor.snapshot().used_bytes == 100 * MIB:
                        break
                except Unavailable:
                    pass
                await asyncio.sleep(0.01)
            assert monitor.snapshot().used_bytes == 100 * MIB
        finally:
            await monitor.stop()

    asyncio.run(go())


@pytest.mark.parametrize(("toml", "problem"), [
    ("[vram]\nthreshold_percent = 0", "vram.threshold_percent: expected a percentage above 0"),
    ("[vram]\nthreshold_percent = 101", "vram.threshold_percent: expected a percentage above 0"),
    ('[vram]\neviction_policy = "random"', "vram.eviction_policy: expected one of 'priority' | 'lru' | 'fifo'"),
    ("[vram]\npolling_interval_seconds = 0", "vram.polling_interval_seconds: expected a number greater than 0"),
    ("[vram]\nsimulate_total_mib = 0", "vram.simulate_total_mib: expected a number greater than 0"),
    ("[vram]\nheadroom_mib = -1", "vram.headroom_mib: expected an integer of at least 0"),
    ('[backends.ollama]\nurl = "unix:/run/ollama.sock"', "backends.ollama.url: expected an http:// or https:// URL"),
    ('[backends.ollama]\nmodels_dir = "models"', "backends.ollama.models_dir: expected an absolute path"),
    ('[backends.llamacpp]\nbinary = ""', "backends.llamacpp.binary: expected a non-empty string"),
])
def test_invalid_vram_and_backend_config(toml: str, problem: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_text("[security.tls]\nenabled = false\n" + toml, "config.toml", env={})
    assert problem in str(info.value)


def test_vram_and_backend_defaults() -> None:
    cfg = parse_text("[security.tls]\nenabled = false\n", "config.toml", env={})
    assert cfg.vram == VramConfig(polling_interval_seconds=2.0, threshold_percent=90.0, eviction_policy="lru",
                                  headroom_mib=512, simulate_total_mib=None)
    assert (cfg.backends.llamacpp.binary, cfg.backends.ollama.binary, cfg.backends.ollama.url,
            cfg.backends.ollama.models_dir) == ("llama-server", "ollama", None, None)
    assert MemoryMonitor.RESTART_KEYS == ("vram.simulate_total_mib",)


# A stand-in for the NVIDIA driver's libnvidia-ml.so.1, with NVML's C ABI (nvml.h): two GPUs.
# GPU 0: 80 GiB, 3 GiB used by pid 1111 (compute, 1 GiB) and pid 2222 (compute and graphics,
# 2 GiB), 37 % busy. GPU 1: 24 GiB, 4 GiB used by pid 1111, a process whose memory NVML cannot
# tell, no utilization or graphics process queries (NOT_SUPPORTED). Environment knobs:
# SIM_NVML_INIT_ERROR=<code> fails nvmlInit, SIM_NVML_GPUS=<n> sets the count, and
# SIM_NVML_FAIL_AFTER=<n> makes memory queries after the n-th fail with GPU_IS_LOST.
SIM_NVML_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
typedef struct { int index; } device;
typedef device *nvmlDevice_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gpuInstanceId, computeInstanceId; }
    nvmlProcessInfo_t;
enum { OK = 0, INVALID_ARGUMENT = 2, NOT_SUPPORTED = 3, INSUFFICIENT_SIZE = 7, GPU_IS_LOST = 15 };
#define GIB (1024ULL * 1024 * 1024)
static device devices[2] = {{0}, {1}};
static int memory_calls;
static int env(const char *name, int fallback) { const char *v = getenv(name); return v ? atoi(v) : fallback; }
int nvmlInitWithFlags(unsigned int flags) { return env("SIM_NVML_INIT_ERROR", OK); }
int nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
int nvmlShutdown(void) { return OK; }
const char *nvmlErrorString(int code) { return "simulated NVML error"; }
int nvmlDeviceGetCount_v2(unsigned int *count) { *count = env("SIM_NVML_GPUS", 2); return OK; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *out) {
    if (i >= 2) return INVALID_ARGUMENT;
    *out = &devices[i]; return OK;
}
int nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int len) {
    snprintf(name, len, "Simulated H100 #%d", d->index); return OK;
}
int nvmlSystemGetDriverVersion(char *version, unsigned int len) { snprintf(version, len, "555.42.06"); return OK; }
int nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *m) {
    int limit = env("SIM_NVML_FAIL_AFTER", -1);
    if (limit >= 0 && ++memory_calls > limit) return GPU_IS_LOST;
    m->total = d->index == 0 ? 80 * GIB : 24 * GIB;
    m->used = d->index == 0 ? 3 * GIB : 4 * GIB;
    m->free = m->total - m->used; return OK;
}
int nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    if (d->index == 1) return NOT_SUPPORTED;
    u->gpu = 37; u->memory = 12; return OK;
}
static int list(const nvmlProcessInfo_t *procs, unsigned int n, unsigned int *count, nvmlProcessInfo_t *out) {
    if (n == 0) { *count = 0; return OK; }
    if (*count < n || out == NULL) { *count = n; return INSUFFICIENT_SIZE; }
    memcpy(out, procs, n * sizeof *procs); *count = n; return OK;
}
int nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *out) {
    static const nvmlProcessInfo_t gpu0[] = {{1111, 1 * GIB, 0, 0}, {2222, 2 * GIB, 0, 0}};
    static const nvmlProcessInfo_t gpu1[] = {{1111, 4 * GIB, 0, 0}, {3333, ~0ULL, 0, 0}};
    return d->index == 0 ? list(gpu0, 2, count, out) : list(gpu1, 2, count, out);
}
int nvmlDeviceGetGraphicsRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *out) {
    static const nvmlProcessInfo_t gpu0[] = {{2222, 2 * GIB, 0, 0}};
    return d->index == 0 ? list(gpu0, 1, count, out) : NOT_SUPPORTED;
}
"""

PROBE = textwrap.dedent("""
    import asyncio, dataclasses, json, sys
    from securellm_bridge.config.local import VramConfig
    from securellm_bridge.errors import Unavailable
    from securellm_bridge.local.vram import MemoryMonitor

    async def go():
        monitor = MemoryMonitor(VramConfig())
        first = await monitor.refresh()
        try:
            await monitor.refresh()
            second_error = None
        except Unavailable as exc:
            second_error = str(exc)
        kept = monitor.snapshot() is first
        await monitor.stop()
        out = dataclasses.asdict(first)
        out["processes"] = {str(k): v for k, v in first.processes.items()}
        for d in out["devices"]:
            d["processes"] = {str(k): v for k, v in d["processes"].items()}
        out.update(second_error=second_error, kept=kept)
        print(json.dumps(out))

    asyncio.run(go())
""")


@pytest.fixture(scope="module")
def sim_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    libdir = tmp_path_factory.mktemp("nvml")
    (libdir / "nvml_sim.c").write_text(SIM_NVML_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(libdir / "libnvidia-ml.so.1"),
                    str(libdir / "nvml_sim.c")], check=True, capture_output=True, text=True)
    return libdir


def probe(libdir: Path, **env: str) -> dict[str, object]:
    environ = {**os.environ, "LD_LIBRARY_PATH": str(libdir), **env,
               "PYTHONPATH": os.pathsep.join([str(ROOT / "daemon"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.slow
def test_nvml_reader_on_a_simulated_driver(sim_nvml: Path) -> None:
    snap = probe(sim_nvml)
    gib = 1024 * MIB
    assert snap["mode"] == "gpu"
    assert snap["reason"] == "NVML: 2 GPU(s), driver 555.42.06"
    assert snap["devices"] == [
        {"index": 0, "name": "Simulated H100 #0", "total_bytes": 80 * gib, "used_bytes": 3 * gib,
         "free_bytes": 77 * gib, "utilization_percent": 37, "processes": {"1111": 1 * gib, "2222": 2 * gib}},
        {"index": 1, "name": "Simulated H100 #1", "total_bytes": 24 * gib, "used_bytes": 4 * gib,
         "free_bytes": 20 * gib, "utilization_percent": None, "processes": {"1111": 4 * gib}},
    ]
    assert (snap["total_bytes"], snap["used_bytes"], snap["free_bytes"]) == (104 * gib, 7 * gib, 97 * gib)
    assert snap["processes"] == {"1111": 5 * gib, "2222": 2 * gib}
    assert (snap["second_error"], snap["kept"]) == (None, False)


@pytest.mark.slow
@pytest.mark.parametrize(("env", "reason"), [
    ({"SIM_NVML_INIT_ERROR": "9"}, "no usable GPU (NVML: Driver Not Loaded); using system RAM"),
    ({"SIM_NVML_GPUS": "0"}, "no usable GPU (NVML reports no GPU); using system RAM"),
    ({"SIM_NVML_FAIL_AFTER": "0"}, "no usable GPU (reading it failed: NVML: GPU is lost); using system RAM"),
])
def test_nvml_failures_fall_back_to_system_ram(sim_nvml: Path, env: dict[str, str], reason: str) -> None:
    snap = probe(sim_nvml, **env)
    assert (snap["mode"], snap["reason"], snap["devices"]) == ("cpu", reason, [])
    assert snap["total_bytes"] == meminfo_kib("MemTotal") * 1024


@pytest.mark.slow
def test_nvml_failure_while_polling_keeps_the_last_snapshot(sim_nvml: Path) -> None:
    # Two GPUs: the first refresh (after the check at open) reads memory 4 times in all.
    snap = probe(sim_nvml, SIM_NVML_FAIL_AFTER="4")
    assert snap["mode"] == "gpu"
    assert snap["second_error"] == "memory query failed: NVML: GPU is lost"
    assert snap["kept"] is True
