"""What an :class:`helpers.study.evaluation.evaluate.Evaluation` says, as tables for people: short labels,
means with their CIs, the study's rows beside ours, runtime, the weights behind each method.
Nothing here computes a score: every number comes from the evaluation (or, for the study and the
published anchors, from :mod:`helpers.report.published`, labelled as such)."""
from __future__ import annotations

import math

import pandas as pd

from helpers.report import published
from helpers.report.public import first_sentence, public_text
from helpers.report.published import STUDY, STUDY_PROTOCOL, STUDY_SOURCE
from helpers.study.evaluation.digit_accuracy import REFERENCE_LABELS
from helpers.study.evaluation.evaluate import LABELS, Evaluation
from helpers.study.methods import short_label


def fmt(v, digits: int) -> str:
    """A number with ``digits`` decimals; "n/a" for a missing one."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


SHORT = {"psnr": "PSNR", "ssim": "SSIM", "psnr_hole": "hole dB", "ssim_hole": "hole SSIM", "lpips": "LPIPS"}


DIGITS = {"psnr": 2, "psnr_hole": 2, "ssim": 3, "ssim_hole": 3, "lpips": 3, "fid": 2, "kid": 4}


def cell(row, key):
    """A row's value, None when it is missing or NaN."""
    v = row.get(key) if hasattr(row, "get") else None
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def metric_name(metric: str) -> str:
    """"Hole PSNR", "SSIM"...: a metric's label without its unit, capitalised."""
    name = LABELS[metric].replace(" (dB)", "")
    return name[0].upper() + name[1:]


def _ci(r, m) -> str:
    d = DIGITS[m]
    return f"{fmt(cell(r, m), d)} [{fmt(cell(r, m + '_lo'), d)}, {fmt(cell(r, m + '_hi'), d)}]"



def format_summary(ev: Evaluation) -> pd.DataFrame:
    """The main table, per-image metrics: mean [95 % CI] per method (short labels), missing rows
    kept. FID and KID, which score a set of images, are in :func:`format_set_metrics`."""
    lpips_ok = ev.info.get("lpips", {}).get("available", False)
    rows = []
    for _, r in ev.summary.iterrows():
        out = {"method": short_label(r["method"]), "n": int(r["n"])}
        for m in ("psnr_hole", "ssim_hole", "psnr", "ssim", "lpips"):
            if r["status"] == "missing":
                out[LABELS[m]] = "missing"
            elif m == "lpips" and not lpips_ok:
                out[LABELS[m]] = "not computed"
            else:
                out[LABELS[m]] = _ci(r, m)
        rows.append(out)
    return pd.DataFrame(rows).set_index("method")


def format_set_metrics(ev: Evaluation) -> pd.DataFrame:
    """FID and KID per method (short labels), each with the number of images it compares."""
    rows = []
    for _, r in ev.summary.iterrows():
        out = {"method": short_label(r["method"]), "n": int(r["n"])}
        fid, kid = cell(r, "fid"), cell(r, "kid")
        if r["status"] == "missing":
            out.update({"FID ↓": "missing", "KID ↓ (± std over subsets)": "missing"})
        else:
            out["FID ↓"] = f"{fmt(fid, 2)} (n={int(r['fid_n'])})" if fid is not None else "not computed"
            out["KID ↓ (± std over subsets)"] = (f"{fmt(kid, 4)} ± {fmt(cell(r, 'kid_std'), 4)}"
                                                 if kid is not None else "not computed")
        rows.append(out)
    return pd.DataFrame(rows).set_index("method")



def format_runtime(ev: Evaluation) -> pd.DataFrame:
    """Runtime table: seconds per image, images/s, peak memory, parameters (short labels; the
    weights each method used are in :func:`weights_table`)."""
    if ev.runtime.empty:
        return pd.DataFrame(columns=["method"])
    df = ev.runtime.copy()

    def num(v, spec, missing="not recorded"):
        return missing if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)
    out = pd.DataFrame({
        "method": [short_label(m) for m in df["method"]], "device": df["device"],
        "s / image": [num(v, ".3g") for v in df["seconds_per_image"]],
        "images / s": [num(v, ".3g") for v in df["images_per_s"]],
        "peak memory (MiB)": [num(v, ",.0f", "n/a (CPU)") for v in df["peak_memory_MiB"]],
        "trained params": [num(v, ",.0f") for v in df["trainable_params"]],
        "total params": [num(v, ",.0f") for v in df["total_params"]]})
    return out.set_index("method")


def weights_table(ev: Evaluation) -> pd.DataFrame:
    """The weights each method used (or why it is missing), without this machine's paths: the
    detail behind the short labels, for the HTML report."""
    rows = []
    for _, r in ev.summary.iterrows():
        note = r.get("note") if isinstance(r.get("note"), str) else ""
        weights = r.get("weights") if isinstance(r.get("weights"), str) else ""
        rows.append({"method": r["label"], "weights used / reason missing":
                     public_text(weights if r["status"] != "missing" else note),
                     "note": public_text(note) if r["status"] == "partial" else ""})
    return pd.DataFrame(rows).set_index("method")


ACCURACY = "digit accuracy ↑ [95 % CI]"


def format_digit_accuracy(acc) -> pd.DataFrame:
    """The digit accuracy (:mod:`helpers.study.evaluation.digit_accuracy`) per row: correct / n and the
    accuracy with its Wilson 95 % interval (the two reference rows first)."""
    rows = [{"method": _name(r["method"], r["label"]),
             "n": int(r["n"]), "correct": int(r["correct"]), ACCURACY: _acc(r)} for _, r in acc.summary.iterrows()]
    return pd.DataFrame(rows, columns=["method", "n", "correct", ACCURACY]).set_index("method")


def format_accuracy_pairs(acc) -> pd.DataFrame:
    """The paired differences of accuracy (a - b, image by image) with their bootstrap 95 % CIs."""
    rows = [{"difference": f"{_name(r['a'], r['label_a'])} − {_name(r['b'], r['label_b'])}", "n": int(r["n"]),
             "accuracy difference [95 % CI]": f"{r['diff']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}]",
             "excludes 0": "yes" if excludes_zero(r["excludes_zero"]) else "no"} for _, r in acc.paired.iterrows()]
    return pd.DataFrame(rows, columns=["difference", "n", "accuracy difference [95 % CI]", "excludes 0"])


def _name(method: str, label: str) -> str:
    return label if method in REFERENCE_LABELS else short_label(method)


def excludes_zero(v) -> bool:
    """A paired table's ``excludes_zero`` cell, a bool as computed or the text "True" / "False" as read back."""
    return v is True or str(v).lower() == "true"


def _acc(r) -> str:
    return f"{fmt(float(r['accuracy']), 3)} [{fmt(float(r['accuracy_lo']), 3)}, {fmt(float(r['accuracy_hi']), 3)}]"


def accuracy_cells(ev: Evaluation) -> dict[str, str] | None:
    """method -> its digit accuracy with the Wilson 95 % interval; None when the metric does not apply."""
    acc = ev.accuracy
    if acc is None or not acc.applies:
        return None
    return {r["method"]: _acc(r) for _, r in acc.summary.iterrows()}


def _with_accuracy(rows: list[dict], ids: list[str | None], cells: dict | None) -> list[dict]:
    """Each row with the accuracy column (``-`` where not measured: the study, other papers, missing)."""
    if cells is None:
        return rows
    return [{**r, ACCURACY: cells.get(m, "-") if m else "-"} for r, m in zip(rows, ids)]


def _scores(d: dict) -> dict:
    return {"PSNR ↑": d.get("psnr"), "SSIM ↑": d.get("ssim"), "LPIPS ↓": d.get("lpips"), "FID ↓": d.get("fid")}


def _format_scores(df: pd.DataFrame) -> pd.DataFrame:
    for col, d in (("PSNR ↑", 2), ("SSIM ↑", 3), ("LPIPS ↓", 3), ("FID ↓", 2)):
        df[col] = [fmt(v, d) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "-"
                   for v in df[col]]
    return df


def study_table(ev: Evaluation, preset: str) -> pd.DataFrame:
    """The study's reported rows, each followed by our row of the same method, then our other
    methods: the side by side a presenter needs. Whole-image scores (the study reports those)."""
    lpips_ok = ev.info.get("lpips", {}).get("available", False)
    summ = ev.summary.set_index("method")

    def ours(m):
        r = summ.loc[m]
        if r["status"] == "missing":
            return {"method": short_label(m), "source": f"this run ({preset}): missing", "n images": 0,
                    **_scores({})}
        return {"method": short_label(m), "source": f"this run ({preset})", "n images": int(r["n"]),
                **_scores({"psnr": cell(r, "psnr"), "ssim": cell(r, "ssim"),
                           "lpips": cell(r, "lpips") if lpips_ok else None, "fid": cell(r, "fid")})}
    rows, shown, ids = [], [], []
    for s in STUDY:
        rows.append({"method": short_label(s["id"]), "source": STUDY_SOURCE, "n images": "not stated", **_scores(s)})
        ids.append(None)
        if s["id"] in summ.index:
            rows.append(ours(s["id"]))
            shown.append(s["id"])
            ids.append(s["id"])
    rest = [m for m in summ.index if m not in shown]
    rows += [ours(m) for m in rest]
    rows = _with_accuracy(rows, ids + rest, accuracy_cells(ev))
    return _format_scores(pd.DataFrame(rows)).set_index("method")


def anchor_table() -> pd.DataFrame:
    """Published numbers on CelebA-HQ 256 (other papers, their masks and test sets): scale only."""
    if not published.ANCHORS:
        return pd.DataFrame(columns=["method", "source", "protocol", "n images", *_scores({})]).set_index("method")
    rows = [{"method": a["method"], "source": a["short_source"], "protocol": a["protocol"],
             "n images": a["n_images"] or "not stated", **_scores(a)} for a in published.ANCHORS]
    return _format_scores(pd.DataFrame(rows)).set_index("method")



def comparison_table(ev: Evaluation, preset: str) -> pd.DataFrame:
    """Every row in one table with its source, protocol and number of images (saved as CSV; the
    slides show it as :func:`study_table` and :func:`anchor_table`). Only the "this run" rows are
    measured here."""
    rows, ids = [], []
    ours_protocol = (f"this run ({preset}): {ev.info['n_test']} frozen test images, "
                     f"{ev.info['image_size']} px, masks {'/'.join(sorted(set(ev.per_image['kind'])))}")
    lpips_ok = ev.info.get("lpips", {}).get("available", False)
    for _, r in ev.summary.iterrows():
        ids.append(r["method"] if r["status"] != "missing" else None)
        if r["status"] == "missing":
            rows.append({"method": r["label"], "source": "this run",
                         "protocol": "missing: " + public_text(r.get("note", "")), "n images": 0, **_scores({})})
            continue
        rows.append({"method": r["label"], "source": "this run (measured)", "protocol": ours_protocol,
                     "n images": int(r["n"]),
                     **_scores({"psnr": cell(r, "psnr"), "ssim": cell(r, "ssim"),
                                "lpips": cell(r, "lpips") if lpips_ok else None, "fid": cell(r, "fid")})})
    for s in STUDY:
        rows.append({"method": s["method"], "source": STUDY_SOURCE, "protocol": STUDY_PROTOCOL,
                     "n images": "not stated", **_scores(s)})
    for a in published.ANCHORS:
        rows.append({"method": a["method"], "source": a["source"], "protocol": a["protocol"],
                     "n images": a["n_images"] or "not stated", **_scores(a)})
    rows = _with_accuracy(rows, ids + [None] * (len(rows) - len(ids)), accuracy_cells(ev))
    return _format_scores(pd.DataFrame(rows)).set_index("method")



def methods_overview(ev: Evaluation) -> pd.DataFrame:
    """One row per method: its short label, what it is, status and images scored (the weights
    behind each are in :func:`weights_table`)."""
    rows = []
    runtime = ev.runtime.set_index("method") if "method" in ev.runtime else pd.DataFrame()
    for _, r in ev.summary.iterrows():
        note = r.get("note") if isinstance(r.get("note"), str) else ""
        rows.append({"method": short_label(r["method"]), "what it is": r["label"], "status": r["status"],
                     "n images": int(r["n"]), "trained in this run": trained_here(runtime, r["method"]),
                     "note": public_text(first_sentence(note)) if r["status"] != "ok" else ""})
    return pd.DataFrame(rows).set_index("method")


def trained_here(runtime: pd.DataFrame, method: str) -> str:
    """How long a method's model trained in this run, from its meta.json: "400 steps, 212 s"; "-" when it
    did not train here (Telea, RePaint and zero-shot use the pretrained weights as they are)."""
    if method not in runtime.index or "train_steps" not in runtime:
        return "-"
    steps, seconds = runtime.loc[method, "train_steps"], runtime.loc[method].get("train_seconds")
    if steps is None or pd.isna(steps):
        return "-"
    return f"{int(steps)} steps" + ("" if seconds is None or pd.isna(seconds) else f", {float(seconds):.0f} s")



def table(df: pd.DataFrame):
    """Display helper: a table as HTML with every cell's full text (pandas would cut long notes)."""
    from IPython.display import HTML
    if df.index.name:                      # the index as an ordinary first column: one header row
        df = df.reset_index()
    with pd.option_context("display.max_colwidth", None):
        return HTML(df.to_html(escape=True, na_rep="-", index=False))

