"""Reading Dassl ``log.txt`` files (CoOp's parse_test_res.py semantics), for runs without results.json.

A line *equal* to an end signal arms the parser; afterwards every ``* <keyword>: <value>%`` line
overwrites the stored value, so the last match after the signal wins. Training logs end with
"Finish training" (Dassl >= 0.6.1, one decimal) or "Finished training" (older Dassl, two decimals,
used by MaPLe's copy); both are accepted. Eval-only logs have no end signal; their values follow
"=> result".
"""
import os
import os.path as osp
import re

__all__ = ["END_SIGNALS", "RESULT_SIGNAL", "metric_regex", "parse_lines", "parse_log", "log_files", "read_run_log"]

END_SIGNALS = ("Finish training", "Finished training")
RESULT_SIGNAL = "=> result"

# keyword in the log -> metric name in results.json
LOG_KEYS = {"accuracy": "accuracy", "error": "error_rate", "macro_f1": "macro_f1"}


def metric_regex(keyword):
    return re.compile(r"\* " + re.escape(keyword) + r": ([\.\deE+-]+)%")


def parse_lines(lines, keywords=("accuracy",), signals=END_SIGNALS):
    """{keyword: float} from the lines after the first line equal to one of ``signals`` (last match wins)."""
    regexes = [(k, metric_regex(k)) for k in keywords]
    armed = False
    out = {}
    for line in lines:
        line = line.strip()
        if line in signals:
            armed = True
        if not armed:
            continue
        for k, rx in regexes:
            m = rx.search(line)
            if m:
                out[k] = float(m.group(1))
    return out


def parse_log(path, keywords=("accuracy",), signals=END_SIGNALS):
    with open(path, "r", errors="replace") as f:
        return parse_lines(f.readlines(), keywords, signals)


def log_files(run_dir):
    """``log.txt`` then the rotated ``log.txt-YYYY-MM-DD-HH-MM-SS`` files, oldest first."""
    names = [n for n in os.listdir(run_dir) if n == "log.txt" or n.startswith("log.txt-")]
    names.sort(key=lambda n: "" if n == "log.txt" else n)
    return [osp.join(run_dir, n) for n in names]


def read_run_log(run_dir):
    """Metrics of a run directory from its newest log that has a result, or None.

    Returns (metrics with results.json names, path, kind) where kind is "train" (an end signal was
    found) or "eval" (only a "=> result" block).
    """
    keys = tuple(LOG_KEYS)
    for path in reversed(log_files(run_dir)):
        with open(path, "r", errors="replace") as f:
            lines = f.readlines()
        vals = parse_lines(lines, keys, END_SIGNALS)
        kind = "train"
        if "accuracy" not in vals:
            vals = parse_lines(lines, keys, (RESULT_SIGNAL,))
            kind = "eval"
        if "accuracy" in vals:
            return {LOG_KEYS[k]: v for k, v in vals.items()}, path, kind
    return None
