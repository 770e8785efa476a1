"""azr task-check harness: runs inside the WASI interpreter (and, for the benchmark's reference,
under a native python3). The host writes one JSON request to stdin; the harness answers with
one JSON event per line on stdout, each line prefixed by the request's nonce so that anything
the checked program prints is never mistaken for an answer. Events are flushed as they happen,
so when the host stops a run (timeout, memory) it knows which call was running.

The harness reports what happened and never judges: expected values are not sent to an
interpreter that runs model-written code. The host compares reported reprs with expected ones
through the `compare` op, in a fresh interpreter that runs nothing but literal parsing.

Model code runs "armed" (see `arm`): the harness works on private copies of everything it uses
after model code has run, and an audit hook refuses frame, gc and tracing introspection, so
the program can neither read the nonce nor patch the harness to forge an event. What is left to
a hostile program is to break the channel (exit, close stdout, loop): every such early end
leaves an event missing, which the host counts as a failure.

Requests:
  {"op": "call", "nonce", "program", "entry", "inputs": [text], "banned": [module],
   "perturb": int, "max_repr": int, "repeat": bool}
      -> {"event": "program", "status": "ok", "arity": n, "normalized": ast.unparse(program)}
         | {"event": "program", "status": "syntax" | "banned" | "definition" | "missing", ...}
      -> then per input: {"event": "call", "index": i, "status": "value", "repr", "literal",
                          "printed"} | {"status": "raised", "error"}
                          | {"status": "bad_input", "error"} | {"status": "repr_too_long"}
                          | {"status": "stateful", "first", "second"} (repeat: a second call
                            on the same input, in the same program state, returned another value)
         Each call runs in a fresh program state (the module body is run again). `repr` is
         Python's repr when the value is a plain literal (`literal`: exact builtin types all
         the way down), else only the name of its type: no method of the value is ever called.
  {"op": "run", "nonce", "source"}
      -> {"event": "run", "status": "finished"} when the program ran to its end,
         | {"status": "raised", "error"} (SystemExit, KeyboardInterrupt and `exit()` included)
  {"op": "compare", "nonce", "pairs": [[a, b]]}
      -> per pair: {"event": "compare", "index": i, "equal": bool}: both are literals and ==
"""

import ast
import builtins
import io
import json
import os
import sys

# From here on the harness's own functions resolve builtins in this private copy: a program
# that replaces builtins.repr (or any builtin) changes what it sees, not what the harness does.
__builtins__ = dict(builtins.__dict__)

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

# Audit events that would hand model code a frame (hence the harness's locals, the nonce among
# them), a way to patch the harness, or a way to lift these rules.
BLOCKED_EVENTS = frozenset({
    "sys._getframe", "sys._current_frames", "sys._current_exceptions",
    "sys.settrace", "sys.setprofile", "sys._settraceallthreads", "sys._setprofileallthreads",
    "sys.monitoring.register_callback", "sys.addaudithook",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
})
FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})

IMPORT_SYSTEM = frozenset({"importlib", "_imp", "_frozen_importlib", "_frozen_importlib_external"})

write_fd = os.write
exit_now = os._exit
StringIO = io.StringIO
real_import = builtins.__import__
# JSON string escapes, by code point.
ESCAPES = {i: "\\u%04x" % i for i in range(32)}
ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\"})


def text(value, limit=2000):
    """An exact str copy of `value` (a str subclass cannot run code here), cut to `limit`."""
    try:
        return str.__str__(value)[:limit]
    except BaseException:
        return ""


def encode(event):
    """JSON for a flat dict of str, int, bool and None, without the json module (a program
    can patch that module's globals)."""
    parts = []
    for key, value in event.items():
        if value is None:
            encoded = "null"
        elif value is True or value is False:
            encoded = "true" if value else "false"
        elif type(value) is int:
            encoded = int.__repr__(value)
        else:
            encoded = '"' + str.translate(text(value, 1 << 30), ESCAPES) + '"'
        parts.append('"' + key + '": ' + encoded)
    return "{" + ", ".join(parts) + "}"


def emit(nonce, event):
    data = str.encode("\n" + nonce + " " + encode(event) + "\n", "utf-8", "backslashreplace")
    while data:
        data = data[write_fd(1, data):]


def describe(e):
    try:
        message = text(BaseException.__str__(e), 500)
    except BaseException:
        message = ""
    name = text(type(e).__name__, 100)
    return name + (": " + message if message else "")


def arm(banned):
    """Installs the audit hook that every later line of model code runs under. Banned modules
    are refused when imported, however the import is spelled (every import statement, __import__
    call and pickle goes through builtins.__import__; the import system's modules are banned
    with them); the stdlib's own imports of them, made while an allowed module loads, still
    work. A banned module that an allowed one holds as an attribute stays reachable: the ban
    keeps tasks clean, the sandbox and this hook keep the harness safe."""
    loading = [0]
    # The import system's own modules would import anything by other routes.
    if banned:
        banned = banned | IMPORT_SYSTEM

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        top = str.partition(text(name), ".")[0]
        if level == 0 and top in banned and loading[0] == 0:
            raise ImportError("module %s is banned in task programs" % top)
        loading[0] += 1
        try:
            return real_import(name, globals, locals, fromlist, level)
        finally:
            loading[0] -= 1

    def audit(event, args):
        if event in BLOCKED_EVENTS or (event == "object.__getattr__" and args[1] in FRAME_ATTRIBUTES):
            raise RuntimeError("%s is not available to task programs" % event)
        if event == "import" and loading[0] == 0 and str.partition(text(args[0]), ".")[0] in banned:
            raise ImportError("module %s is banned in task programs" % args[0])

    sys.modules.pop("__main__", None)
    builtins.__import__ = guarded_import
    sys.addaudithook(audit)


def banned_imports(tree, banned):
    """Top-level names of banned modules the program names in an import (its AST), reported
    before anything runs; other spellings are refused at import time by `arm`."""
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


def compile_safe(node):
    expr = ast.Expression(body=node)
    ast.fix_missing_locations(expr)
    return compile(expr, "<input>", "eval")


def eval_safe(code):
    return eval(code, {"__builtins__": {}}, dict(SAFE_CALLS, **SAFE_NAMES))


def compile_arguments(source):
    """`source` is what goes between the parentheses of f(...): literals, comma separated. Returns
    code that builds (args, kwargs) anew each time it is evaluated (f may mutate them)."""
    call = ast.parse("f(" + source + "\n)", mode="eval").body
    if not isinstance(call, ast.Call) or any(isinstance(a, ast.Starred) for a in call.args):
        raise ValueError("input must be arguments for f(...)")
    parts = list(call.args) + [kw.value for kw in call.keywords]
    if any(kw.arg is None for kw in call.keywords) or not all(is_safe_expr(p) for p in parts):
        raise ValueError("input must be Python literals (numbers, strings, lists, dicts, sets, ...)")
    keys = [ast.Constant(kw.arg) for kw in call.keywords]
    both = ast.Tuple([ast.List(call.args, ast.Load()),
                      ast.Dict(keys, [kw.value for kw in call.keywords])], ast.Load())
    code = compile_safe(both)
    eval_safe(code)
    return code


def is_literal(value, depth=0):
    """Built only of exact builtin literal types (nesting below 200 levels). Runs no method of
    the value: types are compared exactly and containers are walked by their base methods."""
    kind = type(value)
    if kind in SCALAR_TYPES:
        return True
    if depth > 200:
        return False
    if kind in SEQUENCE_TYPES:
        return all(is_literal(v, depth + 1) for v in value)
    if kind is dict:
        return all(is_literal(k, depth + 1) and is_literal(v, depth + 1) for k, v in dict.items(value))
    return False


def parse_literal(source):
    """(True, value) when `source` is one literal expression, else (False, None). Nothing but
    literals, the SAFE_CALLS and inf/nan is evaluated: no names, attributes or other calls."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
        if is_safe_expr(node):
            value = eval_safe(compile_safe(node))
            if is_literal(value):
                return True, value
    except BaseException:
        pass
    return False, None


def shown(value):
    """(repr, literal): Python's repr of a plain literal, else the name of the value's type."""
    if is_literal(value):
        return repr(value), True
    return type.__repr__(type(value)), False


def define(code, entry):
    """Runs the module body in a fresh namespace and returns (its `entry`, printed anything)."""
    # The real builtins module, not the harness's private copy.
    namespace = {"__name__": "__azr_task__", "__builtins__": builtins}
    sink = sys.stdout = StringIO()
    exec(code, namespace)
    return namespace.get(entry), StringIO.tell(sink) > 0


def call(fn, arguments):
    """(value, printed anything) of fn(*args, **kwargs), the arguments built anew."""
    args, kwargs = eval_safe(arguments)
    sink = sys.stdout = StringIO()
    value = fn(*args, **kwargs)
    return value, StringIO.tell(sink) > 0


def run_calls(req, nonce):
    program, entry = req["program"], req.get("entry", "f")
    try:
        tree = ast.parse(program)
    except SyntaxError as e:
        emit(nonce, {"event": "program", "status": "syntax", "error": "line %s: %s" % (e.lineno, e.msg)})
        return
    banned = frozenset(req.get("banned", []))
    found = banned_imports(tree, banned)
    if found:
        emit(nonce, {"event": "program", "status": "banned", "modules": ", ".join(found)})
        return
    code = compile(tree, "<program>", "exec")
    normalized = ast.unparse(tree)
    # Inputs are parsed before any model code runs, so the program cannot change how.
    arguments = []
    for source in req["inputs"]:
        try:
            arguments.append((compile_arguments(source), None))
        except BaseException as e:
            arguments.append((None, describe(e)))
    # Shift the heap by a request-dependent amount, so that values depending on object
    # addresses (id(), default reprs) differ between the two runs of a determinism check.
    perturb = int(req.get("perturb", 0))
    ballast = [object() for _ in range(perturb)] + [bytes(k) for k in range(2, 2 + 8 * perturb)]
    max_repr = int(req.get("max_repr", 20000))
    repeat = bool(req.get("repeat", False))

    arm(banned)
    try:
        fn, _ = define(code, entry)
    except BaseException as e:
        emit(nonce, {"event": "program", "status": "definition", "error": describe(e)})
        return
    if not callable(fn):
        emit(nonce, {"event": "program", "status": "missing", "error": "no function `%s` defined" % entry})
        return
    try:
        arity = fn.__code__.co_argcount + fn.__code__.co_kwonlyargcount
        arity = arity if type(arity) is int else -1
    except BaseException:
        arity = -1
    emit(nonce, {"event": "program", "status": "ok", "arity": arity, "normalized": normalized})

    for index, (arguments_code, error) in enumerate(arguments):
        event = {"event": "call", "index": index}
        if arguments_code is None:
            event.update(status="bad_input", error=error)
            emit(nonce, event)
            continue
        try:
            # Every call starts from a fresh program state: state one call leaves behind
            # (a mutable default, a global) cannot reach the next.
            fn, printed_at_definition = define(code, entry)
            value, printed = call(fn, arguments_code)
            first, literal = shown(value)
            # Called again in the same state, a pure f returns the same value (AZR's check).
            again = shown(call(fn, arguments_code)[0]) if repeat else (first, literal)
        except BaseException as e:
            event.update(status="raised", error=describe(e))
            emit(nonce, event)
            continue
        if len(first) > max_repr:
            event.update(status="repr_too_long", length=len(first))
        elif again != (first, literal):
            event.update(status="stateful", first=first, second=again[0][:max_repr])
        else:
            event.update(status="value", repr=first, literal=literal,
                         printed=printed or printed_at_definition)
        emit(nonce, event)
    del ballast


def run_program(req, nonce):
    """Runs a whole program (a benchmark check) and reports whether it ran to its end."""
    try:
        code = compile(req["source"], "<program>", "exec")
    except BaseException as e:
        emit(nonce, {"event": "run", "status": "raised", "error": describe(e)})
        return
    arm(frozenset())
    try:
        sys.stdout = StringIO()
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
    except BaseException as e:
        emit(nonce, {"event": "run", "status": "raised", "error": describe(e)})
        return
    emit(nonce, {"event": "run", "status": "finished"})


def run_compare(req, nonce):
    for index, (a, b) in enumerate(req["pairs"]):
        ok, left = parse_literal(a)
        right_ok, right = parse_literal(b)
        try:
            equal = ok and right_ok and bool(left == right)
        except BaseException:
            equal = False
        emit(nonce, {"event": "compare", "index": index, "equal": equal})


def main():
    req = json.loads(sys.stdin.read())
    nonce, op = req["nonce"], req.get("op")
    if op == "call":
        run_calls(req, nonce)
    elif op == "run":
        run_program(req, nonce)
    elif op == "compare":
        run_compare(req, nonce)
    else:
        raise SystemExit("unknown op %r" % (op,))
    # Skip interpreter finalization: it costs more than the checks themselves (~8 ms).
    exit_now(0)


main()
