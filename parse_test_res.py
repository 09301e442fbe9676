"""Summarise the results of a folder of runs (CoOp's parse_test_res.py command line).

Usage (from the repository root)::

    python parse_test_res.py output/base2new/train_base/dtd/shots_16/CoOp/vit_b16_ctxv1
    python parse_test_res.py output/base2new/test_new/dtd/shots_16/CoOp/vit_b16_ctxv1 --test-log
    python parse_test_res.py output/evaluation/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets_16shots \
        --test-log --multi-exp

Every non-hidden subfolder of <directory> (normally seed1, seed2, ...) must hold a ``log.txt``. A
resumed run also has ``log.txt-<timestamp>`` files (one per restart, ``log.txt`` being the oldest);
each subfolder counts once, with the newest of its logs that holds a result. For a training log the values after the line "Finish training" are read (the line "Finished training" of
older Dassl versions, which MaPLe's copy of this script expects, is accepted too); with ``--test-log``
the values after "=> result". The last ``* <keyword>: <value>%`` after that line wins. The summary is
the mean and the population standard deviation (or the 95% confidence interval with ``--ci95``) of
the values as printed in the logs. ``--multi-exp`` summarises each subfolder of <directory> as one
experiment and then prints the average of the experiments' means.

For tables over methods, datasets and protocols built from results.json, use
``python -m vlprompt.results``.
"""
import argparse
import math
import os
import os.path as osp
import sys
from collections import OrderedDict

from vlprompt.results.legacy import END_SIGNALS, RESULT_SIGNAL, log_files, parse_lines


class ParseError(RuntimeError):
    pass


def listdir_nohidden(path):
    return sorted(f for f in os.listdir(path) if not f.startswith("."))


def _mean(values):
    return sum(values) / len(values)


def _std(values):
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def compute_ci95(values):
    return 1.96 * _std(values) / math.sqrt(len(values))


def parse_function(keyword, directory, ci95=False, end_signals=END_SIGNALS):
    print(f"Parsing files in {directory}")
    outputs = []
    for subdir in listdir_nohidden(directory):
        run = osp.join(directory, subdir)
        logs = log_files(run) if osp.isdir(run) else []
        if not logs:
            raise ParseError(f"{osp.join(run, 'log.txt')} not found (every non-hidden subfolder of {directory} "
                             f"must hold a log.txt)")
        for fpath in reversed(logs):  # newest first: the latest log holding a result counts
            with open(fpath, "r", errors="replace") as f:
                values = parse_lines(f.readlines(), (keyword,), end_signals)
            if keyword in values:
                outputs.append(OrderedDict([("file", fpath), (keyword, values[keyword])]))
                break
    if not outputs:
        signals = " or ".join(f'"{s}"' for s in end_signals)
        raise ParseError(f"Nothing found in {directory}: no '* {keyword}: ...%' line after {signals} in any log.txt")

    values = []
    for output in outputs:
        msg = ""
        for key, value in output.items():
            msg += f"{key}: {value:.2f}%. " if isinstance(value, float) else f"{key}: {value}. "
        print(msg)
        values.append(output[keyword])

    print("===")
    print(f"Summary of directory: {directory}")
    avg = _mean(values)
    spread = compute_ci95(values) if ci95 else _std(values)
    print(f"* {keyword}: {avg:.2f}% +- {spread:.2f}%")
    print("===")
    return OrderedDict([(keyword, avg)])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=str, help="path to directory")
    parser.add_argument("--ci95", action="store_true", help=r"compute 95%% confidence interval")
    parser.add_argument("--test-log", action="store_true", help="parse test-only logs")
    parser.add_argument("--multi-exp", action="store_true", help="parse multiple experiments")
    parser.add_argument("--keyword", default="accuracy", type=str, help="which keyword to extract")
    args = parser.parse_args(argv)

    end_signals = (RESULT_SIGNAL,) if args.test_log else END_SIGNALS
    if not osp.isdir(args.directory):
        print(f"error: {args.directory} is not a directory", file=sys.stderr)
        return 1
    try:
        if args.multi_exp:
            final = OrderedDict()
            for name in listdir_nohidden(args.directory):
                directory = osp.join(args.directory, name)
                if not osp.isdir(directory):
                    continue
                for key, value in parse_function(args.keyword, directory, args.ci95, end_signals).items():
                    final.setdefault(key, []).append(value)
            print("Average performance")
            for key, values in final.items():
                print(f"* {key}: {_mean(values):.2f}%")
        else:
            parse_function(args.keyword, args.directory, args.ci95, end_signals)
    except ParseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
