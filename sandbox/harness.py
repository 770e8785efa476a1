"""azr task-check harness: runs inside the WASI interpreter (and, for the benchmark's reference,
under a native python3). The host writes one JSON request to stdin; the harness answers with
one JSON event per line on stdout, each line prefixed by the request's nonce so that anything
the checked program manages to print is never mistaken for an answer. Events are flushed as
they happen, so when the host stops a run (timeout, memory) it knows which call was running.

Requests:
  {"op": "call", "nonce", "program", "entry", "inputs": [text], "expected": [text] | null,
   "banned": [module], "perturb": int, "max_repr": int, "repeat": bool}
      -> {"event": "program", "status": "ok", "arity": n, "normalized": ast.unparse(program)}
         | {"event": "program", "status": "syntax" | "banned" | "definition" | "missing", ...}
      -> then per input: {"event": "call", "index": i, "status": "value", "repr", "roundtrips",
                          "printed", "matches"} | {"status": "raised", "error"}
                          | {"status": "bad_input", "error"} | {"status": "repr_too_long"}
                          | {"status": "stateful", "first", "second"} (repeat: a second call
                            on the same input, in the same program state, returned another value)
         Each call runs in a fresh program state (the module body is run again).
  {"op": "compare", "nonce", "pairs": [[a, b]]}
      -> per pair: {"event": "compare", "index": i, "equal": bool}: both are literals and ==
"""

import ast
import json
import os
import sys

# Callables allowed inside an input expression besides plain literals: enough for sets,
# frozensets and special floats, nothing that reaches outside the value.
SAFE_CALLS = {
    "set": set, "frozenset": frozenset, "tuple": tuple, "list": list, "dict": dict,
    "float": float, "int": int, "str": str, "bool": bool, "complex": complex, "bytes": bytes,
}
# Names repr() writes for special floats.
SAFE_NAMES = {"inf": float("inf"), "nan": float("nan")}
LITERAL_NODES = (
    ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Dict, ast.UnaryOp, ast.BinOp,
    ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Load, ast.keyword,
)
# Exact types a value may be built from to count as a literal. Subclasses are excluded, so no
# object can decide for itself how it compares or prints.
SCALAR_TYPES = (int, float, complex, str, bytes, bool, type(None))
SEQUENCE_TYPES = (list, tuple, set, frozenset)


def emit(nonce, event):
    out = sys.__stdout__
    out.write(nonce + " " + json.dumps(event) + "\n")
    out.flush()


def banned_imports(tree, banned):
    """Top-level names of banned modules the program imports, by walking its AST."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Call):
            func = node.func
            dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module")
            if dynamic and node.args and isinstance(node.args[0], ast.Constant):
                names = [str(node.args[0].value)]
        for name in names:
            top = name.split(".")[0]
            if top in banned:
                found.add(top)
    return sorted(found)


def is_safe_expr(node):
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            if not (isinstance(sub.func, ast.Name) and sub.func.id in SAFE_CALLS):
                return False
        elif isinstance(sub, ast.Name):
            if sub.id not in SAFE_CALLS and sub.id not in SAFE_NAMES:
                return False
        elif not isinstance(sub, LITERAL_NODES):
            return False
    return True


def eval_safe(node):
    expr = ast.Expression(body=node)
    ast.fix_missing_locations(expr)
    names = dict(SAFE_CALLS, **SAFE_NAMES)
    return eval(compile(expr, "<input>", "eval"), {"__builtins__": {}}, names)


def parse_arguments(text):
    """`text` is what goes between the parentheses of f(...): literals, comma separated."""
    call = ast.parse("f(" + text + "\n)", mode="eval").body
    if not isinstance(call, ast.Call) or any(isinstance(a, ast.Starred) for a in call.args):
        raise ValueError("input must be arguments for f(...)")
    parts = list(call.args) + [kw.value for kw in call.keywords]
    if any(kw.arg is None for kw in call.keywords) or not all(is_safe_expr(p) for p in parts):
        raise ValueError("input must be Python literals (numbers, strings, lists, dicts, sets, ...)")
    args = [eval_safe(a) for a in call.args]
    kwargs = {kw.arg: eval_safe(kw.value) for kw in call.keywords}
    return args, kwargs


def is_literal(value, depth=0):
    """Built only of exact builtin literal types (nesting below 200 levels)."""
    kind = type(value)
    if kind in SCALAR_TYPES:
        return True
    if depth > 200:
        return False
    if kind in SEQUENCE_TYPES:
        return all(is_literal(v, depth + 1) for v in value)
    if kind is dict:
        return all(is_literal(k, depth + 1) and is_literal(v, depth + 1) for k, v in value.items())
    return False


def parse_literal(text):
    """(True, value) when `text` is one literal expression, else (False, None). Nothing but
    literals, the SAFE_CALLS and inf/nan is evaluated: no names, attributes or other calls."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if is_safe_expr(node):
            value = eval_safe(node)
            if is_literal(value):
                return True, value
    except BaseException:
        pass
    return False, None


def equal_values(value, text):
    """Is `value` a literal equal (==) to the literal expression `text`? Both sides must be
    plain literals, so an object with a custom __eq__ never matches."""
    ok, other = parse_literal(text)
    try:
        return ok and is_literal(value) and bool(value == other)
    except BaseException:
        return False


class CappedSink:
    """Stands in for sys.stdout while f runs: counts what it prints, keeps nothing."""

    def __init__(self):
        self.written = 0

    def write(self, s):
        self.written += len(s)
        return len(s)

    def flush(self):
        pass


def arity(fn):
    code = getattr(fn, "__code__", None)
    return code.co_argcount + code.co_kwonlyargcount if code else -1


def define(code, entry):
    """Runs the module body in a fresh namespace and returns its `entry`; prints are counted."""
    namespace = {"__name__": "__azr_task__"}
    sink = CappedSink()
    try:
        sys.stdout = sink
        exec(code, namespace)
    finally:
        sys.stdout = sys.__stdout__
    return namespace.get(entry), sink.written


def call(fn, text):
    """(value, printed) of fn(*arguments of `text`), its arguments parsed anew."""
    args, kwargs = parse_arguments(text)
    sink = CappedSink()
    try:
        sys.stdout = sink
        value = fn(*args, **kwargs)
    finally:
        sys.stdout = sys.__stdout__
    return value, sink.written > 0


def run_calls(req, nonce):
    program, entry = req["program"], req.get("entry", "f")
    try:
        tree = ast.parse(program)
    except SyntaxError as e:
        emit(nonce, {"event": "program", "status": "syntax", "error": "line %s: %s" % (e.lineno, e.msg)})
        return
    banned = banned_imports(tree, set(req.get("banned", [])))
    if banned:
        emit(nonce, {"event": "program", "status": "banned", "modules": banned})
        return
    code = compile(tree, "<program>", "exec")
    try:
        fn, _ = define(code, entry)
    except BaseException as e:
        emit(nonce, {"event": "program", "status": "definition", "error": describe(e)})
        return
    if not callable(fn):
        emit(nonce, {"event": "program", "status": "missing", "error": "no function `%s` defined" % entry})
        return
    emit(nonce, {"event": "program", "status": "ok", "arity": arity(fn), "normalized": ast.unparse(tree)})

    # Shift the heap by a request-dependent amount, so that values depending on object
    # addresses (id(), default reprs) differ between the two runs of a determinism check.
    perturb = int(req.get("perturb", 0))
    ballast = [object() for _ in range(perturb)] + [bytes(k) for k in range(2, 2 + 8 * perturb)]
    max_repr = int(req.get("max_repr", 20000))
    expected = req.get("expected")
    repeat = bool(req.get("repeat", False))
    for index, text in enumerate(req["inputs"]):
        event = {"event": "call", "index": index}
        try:
            parse_arguments(text)
        except BaseException as e:
            event.update(status="bad_input", error=describe(e))
            emit(nonce, event)
            continue
        try:
            # Every call starts from a fresh program state: state one call leaves behind
            # (a mutable default, a global) cannot reach the next.
            fn, printed_at_definition = define(code, entry)
            value, printed = call(fn, text)
            shown = repr(value)
            # Called again in the same state, a pure f returns the same value (AZR's check).
            again = repr(call(fn, text)[0]) if repeat else shown
        except BaseException as e:
            event.update(status="raised", error=describe(e))
            emit(nonce, event)
            continue
        if len(shown) > max_repr:
            event.update(status="repr_too_long", length=len(shown))
        elif again != shown:
            event.update(status="stateful", first=shown, second=again[:max_repr])
        else:
            event.update(status="value", repr=shown, printed=printed or printed_at_definition > 0,
                         # eval(repr(value)) == value for a plain literal; NaN and
                         # objects never round-trip.
                         roundtrips=equal_values(value, shown))
            if expected is not None:
                event["matches"] = equal_values(value, expected[index])
        emit(nonce, event)
    del ballast


def describe(e):
    message = str(e)
    return type(e).__name__ + (": " + message if message else "")


def run_compare(req, nonce):
    for index, (a, b) in enumerate(req["pairs"]):
        ok, value = parse_literal(a)
        emit(nonce, {"event": "compare", "index": index, "equal": ok and equal_values(value, b)})


def main():
    req = json.loads(sys.stdin.read())
    op = req.get("op")
    if op == "call":
        run_calls(req, req["nonce"])
    elif op == "compare":
        run_compare(req, req["nonce"])
    else:
        raise SystemExit("unknown op %r" % (op,))
    # Skip interpreter finalization: it costs more than the checks themselves (~8 ms).
    sys.__stdout__.flush()
    sys.__stderr__.flush()
    os._exit(0)


main()
