"""``python -m vlprompt.features {info,clear} [--dir DIR]``: size report / removal of the feature store."""
import argparse
import sys

from .store import ENV_VAR, FeatureStore, _human


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m vlprompt.features",
        description=f"The frozen-feature store (default folder: ${ENV_VAR} or ~/.cache/vlprompt/features).",
    )
    parser.add_argument("command", choices=["info", "clear"], help="info: size report; clear: remove every entry")
    parser.add_argument("--dir", default="", help="store folder (default: FEATURES.DIR / $%s / ~/.cache/...)" % ENV_VAR)
    args = parser.parse_args(argv)
    store = FeatureStore(args.dir)
    if args.command == "info":
        print(store.format_info())
    else:
        n, freed = store.clear()
        print(f"Feature store: removed {n} files ({_human(freed)}) from {store.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
