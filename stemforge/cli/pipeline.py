"""The main job end to end (``make run``): ``stemforge-pipeline [stages='[...]'] [train.epochs=N] [workdir=PATH]``.

Simulate, train, publish, simulate a held-out scan, analyse it both ways (:mod:`stemforge.pipeline`; config
``stemforge/conf/pipeline.yaml``). Finished stages are skipped on a rerun; a failing stage stops the job with its
exit code and one line on stderr.
"""

from __future__ import annotations

import sys

import hydra


@hydra.main(version_base="1.3", config_path="pkg://stemforge.conf", config_name="pipeline")
def main(cfg) -> None:
    from stemforge.pipeline import PipelineError, run

    try:
        run(cfg)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
