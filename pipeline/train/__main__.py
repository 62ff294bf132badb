"""``python -m pipeline.train [config=FILE.json] key=value ...``: train a CLIP model on shards.

Runs single-process as is, and unchanged under ``torchrun --nproc_per_node=N -m pipeline.train``
(multi-node too). Keys are those of :class:`pipeline.train.config.TrainConfig`::

    python -m pipeline.train data.shards=runs/mimic/shards out=runs/mimic/train preset=full
    torchrun --nproc_per_node=8 -m pipeline.train config=runs/mimic/train/request.json
    python -m pipeline.train ... resume=latest         # continue an interrupted run exactly

Exit codes: 0 done (or stopped by stop_after), 2 a config or data problem (the message names the
fix), 3 the loss went non-finite (the last good checkpoint is kept), 128 + N stopped by signal N
after a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

from pipeline.train.config import ConfigError, TrainConfig, apply_overrides, from_dict

log = logging.getLogger("pipeline.train")


def parse(argv: Sequence[str]) -> TrainConfig:
    """The config of a command line. Raises ConfigError."""
    config = TrainConfig()
    rest = []
    for item in argv:
        if item.startswith("config="):
            path = item.split("=", 1)[1]
            try:
                with open(path) as fh:
                    config = from_dict(json.load(fh))
            except (OSError, json.JSONDecodeError, TypeError) as exc:
                raise ConfigError(f"config={path}: {exc}") from exc
        else:
            rest.append(item)
    return apply_overrides(config, rest)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=os.environ.get("CLIP2CLINIC_LOG_LEVEL", "INFO" if rank == 0 else "WARNING"),
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )
    # Imported here so that --help and config errors cost no torch import.
    from pipeline.train.data import ShardFormatError
    from pipeline.train.loop import NonFiniteLoss, TooManyBadSamples, train

    try:
        config = parse(args)
        summary = train(config)
    except (ConfigError, ShardFormatError, TooManyBadSamples) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if rank == 0:
        state = "done" if summary.get("complete") else "stopped (rerun with the same arguments to resume)"
        print(
            f"train {state}: {summary['steps']} steps, {summary['samples']} samples in "
            f"{summary['seconds']:.1f} s; final checkpoint {config.out}/{summary['final']}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
