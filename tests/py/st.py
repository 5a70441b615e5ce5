"""schemathesis's command line, made robust against one CPython 3.11 defect.

Hypothesis names the filters schemathesis builds by parsing the source of the module that
defines them (hypothesis.internal.lambda_sources). For schemathesis's large coverage module
CPython 3.11.7 can fail inside that parse with "SystemError: AST constructor recursion depth
mismatch", which hypothesis does not catch, and schemathesis then reports it as an error of
whichever operation it was testing. The description is only used in messages, so a parse that
fails falls back to hypothesis's own "lambda: <unknown>" form.
"""
import sys

sys.argv[0] = "st"
try:
    from hypothesis.internal import lambda_sources

    _describe = lambda_sources._lambda_description

    def _lambda_description(f, *args, **kwargs):
        try:
            return _describe(f, *args, **kwargs)
        except (SystemError, RecursionError):
            return "lambda: <unknown>"

    lambda_sources._lambda_description = _lambda_description
except (ImportError, AttributeError):
    pass

from schemathesis.cli import schemathesis  # noqa: E402

sys.exit(schemathesis())
