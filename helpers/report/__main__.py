"""``python -m helpers.report``: run the notebook series with a preset and export the report and slides."""
import sys

from helpers.report.export import main

if __name__ == "__main__":
    sys.exit(main())
