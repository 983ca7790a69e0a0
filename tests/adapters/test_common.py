"""adapters._common: parameter counting and memory release."""

import ctypes.util
import sys

import pytest

from adapters._common import count_parameters, release_memory

from conftest import make_tiny_llama


def test_count_parameters_counts_tied_weights_once():
    untied, tied = make_tiny_llama(tie=False), make_tiny_llama(tie=True)
    assert count_parameters(untied) - count_parameters(tied) == untied.lm_head.weight.numel()


@pytest.mark.skipif(not sys.platform.startswith("linux") or not ctypes.util.find_library("c"), reason="glibc only")
def test_release_memory_trims_the_heap_on_glibc():
    assert release_memory() is True


_MAPPED_BLOCKS = """
import ctypes, ctypes.util, sys
from adapters._common import map_large_blocks

class Info(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(16 << 20))  # mapped (over the first threshold, 128 KiB); freed, it raises the threshold
if sys.argv[1] != "-":
    assert map_large_blocks(int(sys.argv[1])) is True
before = libc.mallinfo2().hblks
block = libc.malloc(4 << 20)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not ctypes.util.find_library("c"), reason="glibc only")
def test_map_large_blocks_maps_what_glibc_would_carve_from_its_heap():
    """Once a 16 MiB block is freed, glibc serves 4 MiB from its heap; with the threshold fixed at 1 MiB, by mmap
    (each in a fresh process: the setting lasts for the rest of the process)."""
    import subprocess

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("glibc before 2.33 has no mallinfo2")

    def mapped(threshold):
        out = subprocess.run([sys.executable, "-c", _MAPPED_BLOCKS, threshold], capture_output=True, text=True,
                             check=True)
        return int(out.stdout)

    assert mapped("-") == 0
    assert mapped(str(1 << 20)) == 1


@pytest.mark.parametrize("threshold", [0, -1, 1.5, True])
def test_map_large_blocks_refuses_what_is_not_a_positive_byte_count(threshold):
    from adapters._common import map_large_blocks

    with pytest.raises(ValueError, match="positive number of bytes"):
        map_large_blocks(threshold)
