"""Notebook 02's cross-check through torchxrayvision works with the installed torch/torchvision.

Run in a fresh interpreter: torchxrayvision must be imported before TensorFlow, which other tests
in this process may have imported already.
"""

import json
import subprocess
import sys

_CHECK = r"""
import json, sys
from cxrbook.data.cleaning import clean, verify_with_torchxrayvision
from cxrbook.data.metadata import load_all
data_dir = sys.argv[1]
kept, _ = clean(load_all(data_dir))
out = verify_with_torchxrayvision(kept, data_dir)
import torch, torchvision
print(json.dumps({"n": len(out), "ok": int(out["xrv_ok"].sum()), "explained": bool(out["explained"].all()),
                  "errors": sorted(set(out["error"]) - {""}), "torch": torch.__version__,
                  "torchvision": torchvision.__version__, "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def test_every_kept_cohen_image_loads_through_torchxrayvision(fake_data):
    proc = subprocess.run([sys.executable, "-c", _CHECK, str(fake_data)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] > 0 and not result["tensorflow_imported"], result
    # Every generated Cohen image is 8-bit except the 16-bit one, which torchxrayvision rejects by design.
    assert result["ok"] == result["n"] - 1 and result["explained"], result
