"""HTCondor's quoting, in one place: ClassAd string literals and submit-language arguments.

Used by the submit description (``submit.py``) and the Work Queue ``condor_*`` shims.
"""

import re
from typing import Sequence

from .errors import ConfigError


def classad_string(text: str) -> str:
    """``text`` as a ClassAd string literal: classad2's own quoting where the bindings are installed,
    else the same escapes (backslash and double quote) by hand."""
    try:
        import classad2
    except ImportError:
        return '"%s"' % str(text).replace("\\", "\\\\").replace('"', '\\"')
    return str(classad2.quote(str(text)))


def condor_quote_args(args: Sequence[str]) -> str:
    """Arguments in HTCondor's new syntax: ``"a 'b c' d"``.

    Inside the double quotes, arguments are separated by spaces; one with spaces or quotes is
    wrapped in single quotes; a literal single quote is written twice, a literal double quote twice.
    """
    out = []
    for a in args:
        a = str(a)
        if "\n" in a:
            raise ConfigError("HTCondor arguments cannot contain newlines: %r" % a)
        a = a.replace('"', '""')
        if a == "" or re.search(r"[\s']", a):
            a = "'" + a.replace("'", "''") + "'"
        out.append(a)
    return '"' + " ".join(out) + '"'
