"""What ``-format`` and ``-af`` print, by HTCondor 23.9's rules (checked against a real pool).

Output options are applied in the order given, one line per ad.  ``-format FMT EXPR`` prints FMT
with one C conversion of EXPR's value; with an undefined value it prints nothing, except a FMT with
no conversion (its text is printed) or ``%v``/``%V`` (``undefined``).  ``-af[:mods] EXPR...``
prints values separated by a space; once any ``-af`` is given every item of the line is separated
that way and the line ends with a newline.  Modifiers: ``,`` (comma-space) or ``t`` (tab)
separators, ``n`` a newline after each value, ``l`` ``NAME = value``, ``h`` a header row and columns
padded to their widest value (``h`` wins over ``l``), ``j`` the job id first, ``r``/``V`` values
as ClassAd literals (strings quoted).  Values are computed by the real ClassAd library.
"""

import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...quoting import classad_string

Item = Tuple[str, str, str]  # ("format", FMT, EXPR) or ("af", "", EXPR)


def classad2() -> Any:
    try:
        import classad2 as c2
    except ImportError:  # pragma: no cover - declared dependency of the wq extra
        sys.stderr.write("ERROR: these condor_* commands need the ClassAd library: pip install htcondor\n")
        raise SystemExit(1)
    return c2


def to_classad(ad: Dict[str, Any]) -> Any:
    c2 = classad2()
    out = c2.ClassAd()
    for k, v in ad.items():
        if k == "_custom":
            for ck, cv in v.items():
                try:
                    out[ck] = c2.ExprTree(cv)
                except Exception:
                    out[ck] = cv
        elif v is not None:
            out[k] = v
    return out


def evaluate(expr: str, ad: Any) -> Any:
    return classad2().ExprTree(expr).eval(ad)


def is_true(expr: Optional[str], ad: Any) -> bool:
    if not expr:
        return True
    v = evaluate(expr, ad)
    return v is True or (isinstance(v, (int, float)) and not isinstance(v, bool) and v != 0)


def _undefined(v: Any) -> bool:
    c2 = classad2()
    return v is c2.Value.Undefined or v is c2.Value.Error


def af_text(v: Any) -> str:
    """A value as -af prints it: strings raw, undefined as 'undefined'."""
    c2 = classad2()
    if v is c2.Value.Undefined:
        return "undefined"
    if v is c2.Value.Error:
        return "error"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def unparsed(v: Any) -> str:
    """A value as a ClassAd literal (strings quoted), for %V, -af:r and -long."""
    if isinstance(v, str):
        return classad_string(v)
    return af_text(v)


def c_escapes(fmt: str) -> str:
    return fmt.replace("\\n", "\n").replace("\\t", "\t").replace("\\\\", "\\")


_CONV = re.compile(r"%([-+ #0]*\d*(?:\.\d+)?)([diouxXeEfFgGsvV%])")


def printf(fmt: str, v: Any) -> str:
    """One -format item: FMT with a C-style conversion of one value (see the module text)."""
    fmt = c_escapes(fmt)
    kinds = [m.group(2) for m in _CONV.finditer(fmt) if m.group(2) != "%"]
    if kinds and _undefined(v) and kinds[0] not in "vV":
        return ""
    if kinds and kinds[0] in "diouxX" and isinstance(v, str):
        return ""  # HTCondor prints nothing for a string through an integer conversion

    def conv(m: "re.Match[str]") -> str:
        flags, kind = m.group(1), m.group(2)
        if kind == "%":
            return "%"
        if kind in "vV":
            return unparsed(v) if kind == "V" else af_text(v)
        if kind in "diouxX":
            try:
                n = int(v)
            except (TypeError, ValueError):
                n = 0
            return ("%" + flags + ("d" if kind in "iu" else kind)) % n
        if kind in "eEfFgG":
            try:
                x = float(v)
            except (TypeError, ValueError):
                x = 0.0
            return ("%" + flags + kind) % x
        return ("%" + flags + "s") % af_text(v)

    return _CONV.sub(conv, fmt)


def parse_output_option(argv: Sequence[str], i: int, items: List[Item]) -> Tuple[int, Optional[str]]:
    """If argv[i] is -format or -af[:mods], append its items; return (next index, af modifiers or None).

    (i, None) unchanged when argv[i] is neither.  Raises ValueError with HTCondor's complaint.
    """
    arg = argv[i]
    low = arg.lower()
    if low in ("-format", "-f", "-fo", "-for", "-form", "-forma"):
        if i + 2 >= len(argv):
            raise ValueError("-format requires format and attribute parameters")
        items.append(("format", argv[i + 1], argv[i + 2]))
        return i + 3, None
    name = low.split(":", 1)[0]
    if name in ("-af", "-autof", "-autoform", "-autoforma", "-autoformat"):
        mods = arg.split(":", 1)[1] if ":" in arg else ""
        j = i + 1
        while j < len(argv) and not argv[j].startswith("-"):
            items.append(("af", "", argv[j]))
            j += 1
        if j == i + 1:
            raise ValueError("-autoformat requires at last one attribute")
        return j, mods
    return i, None


def render(items: Sequence[Item], mods: str, ads: Sequence[Any]) -> str:
    """The lines -format/-af items print for these ClassAds."""
    if not any(kind == "af" for kind, _, _ in items):
        return "".join("".join(printf(fmt, evaluate(expr, c)) for _, fmt, expr in items) for c in ads)
    raw = "r" in mods or "V" in mods
    header = "h" in mods
    label = "l" in mods and not header
    sep = "\t" if "t" in mods else ", " if "," in mods else " "
    heads = ([" ID"] if "j" in mods else []) + [expr for _, _, expr in items]
    rows = []
    for c in ads:
        cells = []
        if "j" in mods:
            cluster, proc = evaluate("ClusterId", c), evaluate("ProcId", c)
            cells.append(("%4d.%-3d" if header else "%d.%d") % (cluster, proc))
        for kind, fmt, expr in items:
            v = evaluate(expr, c)
            if kind == "format":
                cells.append(printf(fmt, v))
            else:
                text = unparsed(v) if raw else af_text(v)
                cells.append("%s = %s" % (expr, text) if label else text)
        rows.append(cells)
    out = []
    if header:
        widths = [max([len(h)] + [len(r[n]) for r in rows]) for n, h in enumerate(heads)]
        rows = [heads] + rows
        rows = [[cell.ljust(w) for cell, w in zip(r, widths)] for r in rows]
    for r in rows:
        if "n" in mods:
            out.append(sep.join(cell + "\n" for cell in r))
        else:
            out.append(sep.join(r) + "\n")
    return "".join(out)
