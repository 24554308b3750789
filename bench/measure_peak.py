"""Peak memory of one real forward pass of a torchvision model, in a fresh process.

    python bench/measure_peak.py NAME SIZE BATCH   ->  {"extra": bytes, "rose": bool}

"extra" is the peak resident memory (VmHWM) above the memory before the pass; used by
bench/bench_memory.py and tests/test_resources.py to check the meta-device estimate.
"""

import json, resource, sys
import torch, torchvision

name, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
model = getattr(torchvision.models, name)(weights=None).eval()
with torch.no_grad():
    model(torch.randn(1, 3, 64, 64))  # load the kernels first
x = torch.randn(batch, 3, size, size)
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
def maxrss():
    # VmHWM is this process's own peak; ru_maxrss also keeps the peak of the parent's
    # memory from before exec (Linux carries it over), so it is only the fallback
    try:
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before, max_before = rss(), maxrss()
with torch.no_grad():
    model(x)
print(json.dumps({"extra": maxrss() - before, "rose": maxrss() > max_before}))
