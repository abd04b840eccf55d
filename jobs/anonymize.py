"""Entrypoint for ``ray job submit``: takes the same arguments as ``fuzzy-people run``.

    ray job submit --working-dir . --runtime-env-json '{"pip": ["fuzzy-people"]}' -- \
        python jobs/anonymize.py --input s3://bucket/raw/ --output s3://bucket/anon/

Inside a job the driver connects to the cluster through RAY_ADDRESS, which Ray sets.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
