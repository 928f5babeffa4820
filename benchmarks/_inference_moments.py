"""The moments side of ``benchmarks/inference.py``, run by an interpreter that has moments.

    /path/to/python benchmarks/_inference_moments.py IN.npz OUT.json

Reads the data sets and the model (its demes YAML, which parameters are free, the start,
bounds), fits each data set with ``moments.Inference.optimize_log`` (multinomial: the
scale θ is optimal, as phasetrace's multinomial likelihood) and writes the estimates and
times. Imports moments, demes and numpy only (never phasetrace).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main(src: str, dst: str) -> None:
    import demes
    import moments

    box = np.load(src, allow_pickle=False)
    yaml = str(box["yaml"])
    free = [str(n) for n in box["free"]]
    start = box["start"].astype(float)
    lower, upper = box["lower"].astype(float), box["upper"].astype(float)
    datasets = box["data"]
    sizes = [int(s) - 1 for s in datasets.shape[1:]]

    base = demes.loads(yaml).asdict()

    def graph(params):
        d = json.loads(json.dumps(base))
        values = dict(zip(free, params, strict=True))
        for deme in d["demes"]:
            if f"N_{deme['name']}" in values:
                deme["epochs"][0]["start_size"] = float(values[f"N_{deme['name']}"])
                deme["epochs"][0]["end_size"] = float(values[f"N_{deme['name']}"])
            if deme["name"] == "X" and "T_split_X" in values:
                deme["epochs"][-1]["end_time"] = float(values["T_split_X"])
        for deme in d["demes"]:
            if deme.get("ancestors") == ["X"] and "T_split_X" in values:
                deme["start_time"] = float(values["T_split_X"])
        for m in d.get("migrations", []):
            # the window follows the demes' times (the split moves with T_split_X)
            m.pop("start_time", None)
            m.pop("end_time", None)
            name = f"m_{m['source']}_{m['dest']}"
            if name in values:
                m["rate"] = float(values[name])
        return demes.Graph.fromdict(d)

    def model_func(params, ns):
        g = graph(params)
        if hasattr(moments.Spectrum, "from_demes"):
            return moments.Spectrum.from_demes(g, sampled_demes=["A", "B"], sample_sizes=ns)
        return moments.Demes.SFS(g, sampled_demes=["A", "B"], sample_sizes=ns)

    out = {"version": moments.__version__, "estimates": [], "seconds": [], "evaluations": []}
    t0 = time.perf_counter()
    one = model_func(start, sizes)
    out["seconds_per_spectrum"] = time.perf_counter() - t0
    out["spectrum_at_truth"] = np.asarray(model_func(box["truth"].astype(float), sizes)).tolist()
    calls = [0]

    def counted(params, ns):
        calls[0] += 1
        return model_func(params, ns)

    for data in datasets:
        fs = moments.Spectrum(data)
        calls[0] = 0

        t0 = time.perf_counter()
        popt = moments.Inference.optimize_log(
            start, fs, counted, lower_bound=lower, upper_bound=upper, multinom=True,
            verbose=0, maxiter=200,
        )  # fmt: skip
        out["seconds"].append(time.perf_counter() - t0)
        out["estimates"].append([float(v) for v in popt])
        out["evaluations"].append(calls[0])
    del one
    with open(dst, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
