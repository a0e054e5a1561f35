"""Run the evaluate flow from JSON parameters (argv[1]); the resume test SIGKILLs this process."""

import json
import sys

if __name__ == "__main__":
    from flows.evaluate import evaluate

    evaluate(json.loads(sys.argv[1]))
