"""What the federated code can do beyond computing: a capability report read from its syntax tree.

The report is advice for a site's reviewer, never a gate: the sandbox and the guard hold the line
at the site whatever it says. It reads `federated.py` (every `%%federated` cell and the head caia
writes before them) with Python's `ast`, never by running it. `caia_runner.py` is not analyzed:
the guard admits only caia's own runner, byte for byte.

Each finding is one place (line, and federated cell when the line lies in one) where the code names
something able to reach past its arguments and `ctx`: files, the network, subprocesses, code built
at run time (`eval`, `exec`, `compile`, names reached by a computed string, private internals),
dynamic imports, unpickling and foreign memory (`pickle`, `marshal`, `ctypes`, native libraries
loaded or compiled at run time...), environment variables, threads and
processes, and writes to stdout, stderr or logging of values derived from site data.

How names are read, so that tricks do not hide them (the report prefers saying too much to silence):
- imports and aliases are followed over the whole module, ignoring scopes (`import os as o`,
  `from os import system as s`, `x = os`, `p = os.path`, default arguments `def f(o=os)`,
  `for m in (os,)`, `x := os`), as are `__import__("m")`, `importlib.import_module("m")`,
  `sys.modules["m"]`, `getattr(m, "name")`, `m.__dict__["name"]` and `globals()/vars()["name"]`;
  `__builtins__` reads as `builtins`;
- a qualified name is read from its start and again from each module in its chain that the report
  knows to hold capabilities (`_MODULES`): libraries re-export what they import, so
  `torch.serialization.os.system` is `os.system` and `torch.serialization.pickle.loads` is `pickle.loads`;
- every reference counts, called or not: `f = os.system` is reported where it is written;
- `getattr`/`setattr`/`delattr`/`hasattr` with a computed name, `globals()`, `locals()`, `vars()`
  and the interpreter's internals (`__dict__`, `__globals__`, `__subclasses__`...) are reported as
  code reached dynamically: what they reach cannot be read from the tree; so is a reach into private
  internals, an attribute or imported name starting with `_` (`np.lib._npyio_impl`, `from m import _f`)
  that the code does not define itself (a dunder only when the code defines it as a method), except
  the descriptive `__version__`, `__name__`, `__qualname__`, `__doc__` and `__module__`;
- a method whose receiver is not a known module is judged by its name (`frame.to_csv(path)`,
  `path.read_text()`, `anything.system(...)`), and `.query(...)`/`.eval(...)` given an argument run
  an expression (pandas' `frame.query`, `frame.eval`), while `model.eval()` without one does not;
- the string given to `eval`/`exec`/`compile`, when it is a constant, is analyzed too;
- a star import of a module with capabilities (`from subprocess import *`) is reported itself.

Data-like output: a simple taint over names. Sources are `<anything>.dataset(...)` calls (`ctx.dataset`)
and the `data` parameter of `train` and `evaluate`; any name assigned (or looped, or bound by
`with`/`:=`/a comprehension) from an expression naming a tainted name is tainted, over the whole
module, whatever the scope. A call to `print`, `sys.stdout/stderr.write`, `logging`'s functions or a
logger-like method (`.info`, `.warning`...) with a tainted argument is reported. A count or a shape
(`print(len(frame))`) is reported too: it is derived from site data, and at small sizes a count
itself tells something about people.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
from dataclasses import asdict, dataclass, field

from ..contracts.errors import BundleError
from ..contracts.fileset import MODULE, is_statistics, role_of
from ..researcher.bundle import Bundle
from ..researcher.compose import CAPTURED_LOADER
from .parts import split_module

ADVICE = ("Advice read from the code's syntax tree, not a gate: it lists what the code names beyond computing and "
          "ctx, each with its line, and may miss what is built at run time or name things the code never does. "
          "Your site's guard and sandbox apply whatever it says; read the code itself before you approve.")

CAPABILITIES: dict[str, str] = {
    "files": "Files outside ctx",
    "network": "Network",
    "subprocess": "Subprocesses and shell commands",
    "dynamic_code": "Code built or reached at run time",
    "dynamic_import": "Dynamic imports",
    "serialization": "Unpickling and foreign memory",
    "environment": "Environment variables and arguments",
    "concurrency": "Threads, processes and signals",
    "output": "Site data written to stdout, stderr or logs",
}

# Qualified names (module paths, builtins as "builtins.x"): a name equal to a key, or under it
# ("socket" covers "socket.socket"), has those capabilities.
_NAMES: dict[str, tuple[str, ...]] = {}


def _add(capabilities: str, *names: str) -> None:
    for name in names:
        _NAMES[name] = tuple(dict.fromkeys(_NAMES.get(name, ()) + tuple(capabilities.split())))


_add("files", "builtins.open", "io.open", "io.open_code", "io.FileIO", "_io", "pathlib", "shutil", "tempfile", "glob",
     "fileinput", "zipfile", "tarfile", "gzip", "bz2", "lzma", "zipimport", "sqlite3", "dbm", "mmap", "linecache",
     "filecmp", "h5py", "importlib.resources", "logging.FileHandler", "logging.handlers", "logging.basicConfig",
     "numpy.load", "numpy.save", "numpy.savez", "numpy.savez_compressed", "numpy.savetxt", "numpy.loadtxt",
     "numpy.genfromtxt", "numpy.fromfile", "numpy.memmap", "numpy.lib.format", "numpy.DataSource",
     "codecs.open", "pandas.io.common", "pandas.HDFStore", "pandas.ExcelWriter", "pandas.ExcelFile", "torch.save",
     "torch.from_file",
     "torch.jit.save", "torch.jit.load", "torch.utils.tensorboard", "PIL.Image.open", "matplotlib.pyplot.savefig",
     *(f"os.{name}" for name in (
         "open", "fdopen", "read", "write", "pread", "pwrite", "sendfile", "remove", "unlink", "rmdir", "removedirs",
         "mkdir", "makedirs", "rename", "renames", "replace", "listdir", "scandir", "walk", "fwalk", "stat", "lstat",
         "chdir", "fchdir", "getcwd", "getcwdb", "chmod", "lchmod", "chown", "lchown", "link", "symlink", "readlink",
         "truncate", "utime", "access", "mkfifo", "mknod", "memfd_create", "open_pty", "statvfs", "chroot",
         "listxattr", "getxattr", "setxattr", "removexattr", "path.exists", "path.lexists", "path.isfile",
         "path.isdir", "path.islink", "path.ismount", "path.getsize", "path.getmtime", "path.getatime",
         "path.getctime", "path.realpath", "path.samefile", "path.expanduser")))
_add("files", *(f"pandas.read_{kind}" for kind in (
    "csv", "table", "fwf", "excel", "json", "html", "xml", "hdf", "feather", "parquet", "orc", "sas", "spss", "stata",
    "sql", "sql_query", "sql_table", "clipboard")))
_add("network", "pandas.read_html", "pandas.read_xml", "pandas.read_sql", "pandas.read_sql_query", "pandas.read_sql_table",
     "pandas.read_gbq", "pandas.io.common")
_add("files serialization", "torch.load", "pandas.read_pickle", "joblib", "shelve", "numpy.lib.format.read_array",
     "numpy.load", "numpy.lib.npyio", "numpy.lib._npyio_impl", "torch.serialization", "torch.package",
     "pandas.io.pickle")
# Native code loaded or compiled at run time: foreign memory, like ctypes.
_add("files serialization", "torch.ops.load_library", "torch.classes.load_library", "numpy.ctypeslib")
_add("files serialization subprocess", "torch.utils.cpp_extension")
_add("serialization", "pickle", "_pickle", "cPickle", "cloudpickle", "dill", "marshal", "ctypes", "_ctypes", "cffi",
     "copyreg", "jsonpickle", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all",
     "yaml.unsafe_load_all", "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.Loader")
_add("network", "socket", "_socket", "ssl", "_ssl", "urllib.request", "urllib.error", "urllib.robotparser", "urllib3",
     "http", "requests", "httpx", "aiohttp", "ftplib", "smtplib", "poplib", "imaplib", "nntplib", "telnetlib",
     "xmlrpc", "socketserver", "asyncore", "asynchat", "select", "selectors", "grpc", "websocket", "websockets",
     "paramiko", "pycurl", "zmq", "webbrowser", "boto3", "botocore", "huggingface_hub", "torch.hub", "mlflow",
     "wandb", "asyncio.open_connection", "asyncio.start_server", "asyncio.open_unix_connection",
     "asyncio.start_unix_server", "asyncio.streams", "asyncio.get_event_loop", "asyncio.new_event_loop",
     "asyncio.get_running_loop", "smtpd", "email.mime", "ipaddress")
_add("network concurrency", "torch.distributed")
_add("subprocess", "subprocess", "_posixsubprocess", "pty", "pexpect", "sh", "plumbum", "commands", "platform.popen",
     *(f"os.{name}" for name in (
         "system", "popen", "startfile", "posix_spawn", "posix_spawnp", "execl", "execle", "execlp", "execlpe",
         "execv", "execve", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve",
         "spawnvp", "spawnvpe")))
_add("dynamic_code", "builtins.eval", "builtins.exec", "builtins.compile", "builtins.breakpoint", "builtins.globals",
     "builtins.locals", "builtins.vars", "code", "codeop", "runpy", "pdb", "types.FunctionType", "types.CodeType",
     "types.LambdaType", "gc.get_objects", "gc.get_referrers", "sys.settrace", "sys.setprofile",
     "sys.addaudithook", "sys._getframe", "inspect.currentframe", "operator.attrgetter", "operator.methodcaller",
     "pandas.eval", "pandas.DataFrame.eval", "pandas.DataFrame.query")
# help("modules") imports every module it finds; help("m") imports m.
_add("dynamic_import", "builtins.__import__", "builtins.help", "pydoc", "importlib", "imp", "pkgutil", "sys.modules",
     "sys.path", "sys.meta_path", "sys.path_hooks", "runpy")
_add("environment", "os.environ", "os.environb", "os.getenv", "os.getenvb", "os.putenv", "os.unsetenv", "sys.argv",
     "sys.orig_argv", "getpass", "os.getlogin", "posix.environ")
_add("concurrency", "threading", "_thread", "multiprocessing", "concurrent.futures", "signal", "sched", "asyncio",
     "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.wait", "os.waitpid", "os.register_at_fork",
     "torch.multiprocessing", "joblib.Parallel")

# Modules a qualified name is read again from when they appear inside it (`x.os.system` -> `os.system`):
# libraries import these and so re-export them. Common words that name submodules or functions of
# data libraries (`scipy.signal`, `torch.select`) are left out, or they would read as what they are not.
_MODULES = {"os", "posix", "posixpath", "sys", "builtins", "__builtins__", "io", "_io", "codecs", "pickle", "_pickle",
            "cloudpickle", "dill", "marshal", "copyreg", "shelve", "joblib", "ctypes", "_ctypes", "cffi", "subprocess",
            "_posixsubprocess", "pty", "socket", "_socket", "ssl", "urllib", "urllib3", "requests", "http",
            "importlib", "pkgutil", "runpy", "shutil", "tempfile", "pathlib", "zipfile", "tarfile", "gzip", "bz2",
            "lzma", "mmap", "threading", "_thread", "multiprocessing", "asyncio", "logging", "inspect", "gc"}
# Methods that run an expression given as a string (pandas' frame.query/eval) when given an argument.
_EXPRESSION_METHODS = {"query", "eval"}
# Methods judged by their name when the receiver is not a module the report knows.
_METHODS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("read_text", "read_bytes", "write_text", "write_bytes", "unlink", "rmdir", "mkdir", "touch",
                     "iterdir", "rglob", "symlink_to", "hardlink_to", "open", "savefig", "tofile", "chmod"), ("files",)),
    **dict.fromkeys(("system", "popen", "Popen", "check_output", "check_call", "getoutput", "getstatusoutput",
                     "execv", "execve", "execvp", "execl", "spawnv", "spawnl", "posix_spawn"), ("subprocess",)),
    **dict.fromkeys(("environ", "getenv", "putenv", "unsetenv"), ("environment",)),
    **dict.fromkeys(("fork", "start_new_thread"), ("concurrency",)),
    **dict.fromkeys(("import_module", "__import__"), ("dynamic_import",)),
    "to_pickle": ("files", "serialization"), "read_pickle": ("files", "serialization"),
}
# pandas writers and `.save(...)`: to a file when given an argument (`frame.to_json()` only returns text).
_WRITERS = {"to_csv", "to_parquet", "to_hdf", "to_excel", "to_feather", "to_sql", "to_stata", "to_json", "to_html",
            "to_latex", "to_markdown", "to_xml", "to_orc", "save", "dump"}
# Attributes that open the interpreter's internals: what they reach is not in the tree.
_INTERNALS = {"__dict__", "__globals__", "__code__", "__closure__", "__subclasses__", "__builtins__", "__class__",
              "__bases__", "__base__", "__mro__", "__getattribute__", "__loader__", "__spec__", "__func__",
              "__self__", "__reduce__", "__reduce_ex__", "__setstate__", "f_globals", "f_locals", "f_back", "gi_frame"}
_DESCRIPTIVE = {"__version__", "__name__", "__qualname__", "__doc__", "__module__"}  # text about a thing, no reach
_NAMESPACES = {"builtins.globals", "builtins.vars", "builtins.locals"}
_DYNAMIC_ATTRIBUTE = {"builtins.getattr", "builtins.setattr", "builtins.delattr", "builtins.hasattr"}
_IMPORTERS = {"builtins.__import__", "importlib.import_module", "importlib.__import__"}
_PRINTERS = {"builtins.print", "sys.stdout.write", "sys.stderr.write", "sys.stdout.writelines",
             "sys.stderr.writelines", "sys.__stdout__.write", "sys.__stderr__.write", "warnings.warn", "pprint"}
_LOG_METHODS = {"debug", "info", "warning", "warn", "error", "critical", "exception", "log", "fatal"}
_CODE_RUNNERS = {"builtins.eval", "builtins.exec", "builtins.compile"}
_BUILTINS = set(dir(builtins)) | {"__builtins__"}


@dataclass(frozen=True)
class Finding:
    """One thing the code can do: `capability` (a key of CAPABILITIES), `what` (short text, e.g.
    "os.system(...)"), `line` (1-based in the analyzed file), `cell` (federated cell ordinal, or
    None for the part before the first cell) and `cell_line`, the line in that notebook cell as
    JupyterLab numbers it, its `%%federated` line being line 1 (None outside cells)."""

    capability: str
    what: str
    line: int
    cell: int | None = None
    cell_line: int | None = None

    def to_json(self) -> dict:
        """{"capability", "heading", "what", "line", "cell", "cell_line"}."""
        return {**asdict(self), "heading": CAPABILITIES[self.capability]}


@dataclass(frozen=True)
class Report:
    """The capability report of a bundle: `findings` in line order, and `captured`, the opaque
    values captured from the researcher's kernel, each {"name", "type", "file", "size" (bytes), "sha256"}."""

    findings: list[Finding]
    captured: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        """{"advice": ADVICE, "findings": [Finding.to_json()...], "captured": [...]}."""
        return {"advice": ADVICE, "findings": [f.to_json() for f in self.findings], "captured": list(self.captured)}


def report(bundle: Bundle) -> Report:
    """Analyze federated.py of an intact bundle (cells numbered as `split_module` numbers them) and
    list its opaque captured values. A module Python cannot parse is one "dynamic_code" finding at
    the line of its error. Raises BundleError if federated.py cannot be read, no longer matches
    manifest.json, or is not UTF-8. A statistics bundle holds no code: its report finds nothing."""
    if is_statistics(bundle.manifest["job"]):
        return Report([], [])
    entry = bundle.manifest["files"].get(MODULE, {})
    try:
        data = (bundle.path / MODULE).read_bytes()
    except OSError as e:
        raise BundleError(f"bundle {bundle.path}: cannot read {MODULE} ({e.strerror}); run `caia verify {bundle.path}`") from e
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise BundleError(f"bundle {bundle.path}: file {MODULE} does not match manifest.json; run `caia verify {bundle.path}`")
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"bundle {bundle.path}: {MODULE} is not UTF-8; rebuild the bundle") from e
    first_lines = _first_lines(bundle)
    try:
        findings = analyze(source, MODULE, first_lines)
    except SyntaxError as e:  # it fails at the site too; say that nothing could be read from it
        line = e.lineno or 1
        findings = [Finding("dynamic_code", f"not Python ({e.msg}): nothing could be read from {MODULE}", line,
                            *_cell_of_lines(source, first_lines).get(line, (None, None)))]
    captured = [
        {"name": e.get("python_name"), "type": e.get("python_type"), "file": name, "size": e["size"], "sha256": e["sha256"]}
        for name, e in bundle.manifest["files"].items() if role_of(name) == "captured"
    ]
    return Report(findings, captured)


def analyze(source: str, filename: str = "federated.py", first_lines: dict[int, int] | None = None) -> list[Finding]:
    """Every capability the Python `source` names (see the module doc), one Finding per
    (capability, what, line), sorted by line. Lines of caia's own captured-value loader, written
    byte for byte as caia writes it, are left out. `first_lines`: cell ordinal -> the notebook
    cell's line of the cell's first code line (see `_cell_of_lines`). Raises SyntaxError if
    `source` is not Python."""
    tree = ast.parse(source, filename)
    found = _Analysis(tree).run()
    skipped = _loader_lines(source)
    cells = _cell_of_lines(source, first_lines)
    unique = {(cap, what, line) for cap, what, line in found if line not in skipped}
    return [Finding(cap, what, line, *cells.get(line, (None, None)))
            for cap, what, line in sorted(unique, key=lambda f: (f[2], f[0], f[1]))]


def _loader_lines(source: str) -> set[int]:
    """Lines of caia's captured-value loader, when it appears exactly as caia writes it before the first cell."""
    loader = CAPTURED_LOADER.lstrip("\n")
    limit, offset = len(source), 0
    for part in split_module(source):
        if part.kind == "cell":
            limit = offset
            break
        offset += len(part.text)
    at = source.find(loader)
    if at < 0 or at + len(loader) > limit or (at and source[at - 1] != "\n"):
        return set()
    first = source.count("\n", 0, at) + 1
    return set(range(first, first + loader.count("\n")))


def _cell_of_lines(source: str, first_lines: dict[int, int] | None = None) -> dict[int, tuple[int, int]]:
    """1-based line -> (federated cell ordinal, line in the notebook cell as JupyterLab numbers it),
    for the lines inside a cell. Composing writes a cell's marker where its `%%federated` line was
    and the code IPython hands to the magic below it, line for line; `first_lines` gives, by
    ordinal, the notebook cell's line of that code's first line (2, below `%%federated`, unless
    blank lines stood above the magic)."""
    cells, line = {}, 1
    for part in split_module(source):
        count = part.text.count("\n") + (0 if part.text.endswith("\n") else 1)
        if part.kind == "cell":
            shift = (first_lines or {}).get(part.ordinal, 2) - 2
            cells.update({at: (part.ordinal, at - line + 1 + shift) for at in range(line, line + count)})
        line += part.text.count("\n")
    return cells


def _first_lines(bundle: Bundle) -> dict[int, int]:
    """Cell ordinal -> the notebook cell's line of its first code line, from records/build.json of
    this very bundle id (untrusted: it moves only the editor lines shown, never what is found)."""
    build = bundle.record("build.json")
    if not isinstance(build, dict) or build.get("bundle_id") != bundle.id or not isinstance(build.get("cells"), list):
        return {}
    return {c["ordinal"]: c["cell_line"] for c in build["cells"] if isinstance(c, dict)
            and type(c.get("ordinal")) is int and type(c.get("cell_line")) is int and c["cell_line"] >= 2}


class _Analysis:
    """One pass to learn aliases and tainted names (repeated until nothing new), one pass to report."""

    def __init__(self, tree: ast.AST):
        self.tree = tree
        self.aliases: dict[str, set[str]] = {}
        self.tainted: set[str] = set()
        self.found: list[tuple[str, str, int]] = []
        self.parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        self.methods, self.own = _own_names(tree)

    def run(self) -> list[tuple[str, str, int]]:
        for _ in range(50):  # a fixpoint; each round can only add aliases and tainted names
            before = (sum(len(v) for v in self.aliases.values()), len(self.tainted))
            self._learn()
            if (sum(len(v) for v in self.aliases.values()), len(self.tainted)) == before:
                break
        for node in ast.walk(self.tree):
            self._report(node)
        return self.found

    # -- learning: aliases and taint ------------------------------------------------------------
    def _learn(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = alias.asname or alias.name.split(".")[0]
                    self._bind(target, {alias.name if alias.asname else alias.name.split(".")[0]})
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    if alias.name != "*":
                        self._bind(alias.asname or alias.name, {f"{node.module}.{alias.name}"})
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    self._assign(target, node.value)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)) and node.value is not None:
                self._assign(node.target, node.value)
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                self._assign(node.target, node.iter, element=True)
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                for item in node.items:
                    if item.optional_vars is not None:
                        self._assign(item.optional_vars, item.context_expr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                self._parameters(node)

    def _parameters(self, node) -> None:
        args = node.args
        positional = args.posonlyargs + args.args
        for arg, default in zip(positional[len(positional) - len(args.defaults):], args.defaults):
            self._assign(ast.Name(arg.arg, ast.Store()), default)
        for arg, default in zip(args.kwonlyargs, args.kw_defaults):
            if default is not None:
                self._assign(ast.Name(arg.arg, ast.Store()), default)
        if getattr(node, "name", None) in ("train", "evaluate"):
            self.tainted.update(a.arg for a in positional + args.kwonlyargs if a.arg == "data")

    def _assign(self, target: ast.AST, value: ast.AST, element: bool = False) -> None:
        if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) and not element \
                and len(target.elts) == len(value.elts):
            for t, v in zip(target.elts, value.elts):
                self._assign(t, v)
            return
        if element and isinstance(value, (ast.Tuple, ast.List, ast.Set)):
            for v in value.elts:
                self._assign(target, v)
        names = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        qualified = set() if element else self._resolve(value)
        for name in names:
            self._bind(name, qualified)
        if self._is_tainted(value):
            self.tainted.update(names)

    def _bind(self, name: str, qualified: set[str]) -> None:
        if qualified:
            self.aliases.setdefault(name, set()).update(qualified)

    def _is_tainted(self, node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in self.tainted:
                return True
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr == "dataset":
                return True
        return False

    # -- resolving an expression to the qualified names it may be ---------------------------------
    def _resolve(self, node: ast.AST) -> set[str]:
        if isinstance(node, ast.Name):
            if node.id in self.aliases:
                return set(self.aliases[node.id])
            return {_builtin(node.id)} if node.id in _BUILTINS else set()
        if isinstance(node, ast.Attribute):
            bases = self._resolve(node.value)
            if node.attr == "__dict__":
                return bases
            return {_normal(f"{base}.{node.attr}") for base in bases}
        if isinstance(node, ast.Subscript):
            key = _constant_string(node.slice)
            if key is None:
                return set()
            bases = self._resolve(node.value)
            if bases & _NAMESPACES or bases & {"builtins.globals()"}:
                return self._resolve(ast.Name(key, ast.Load()))
            if "sys.modules" in bases:
                return {key}
            return {_normal(f"{base}.{key}") for base in bases if not base.endswith("()")}
        if isinstance(node, ast.Call):
            functions = self._resolve(node.func)
            if functions & {"builtins.vars"} and node.args:
                return self._resolve(node.args[0])
            if functions & _NAMESPACES:
                return {"builtins.globals()"}
            name = _constant_string(node.args[1]) if len(node.args) >= 2 else None
            if functions & {"builtins.getattr"} and name is not None:
                return {_normal(f"{base}.{name}") for base in self._resolve(node.args[0])}
            module = _constant_string(node.args[0]) if node.args else None
            if functions & _IMPORTERS and module is not None:
                return {module}
        if isinstance(node, ast.NamedExpr):
            return self._resolve(node.value)
        return set()

    # -- reporting ------------------------------------------------------------------------------
    def _add(self, capabilities, what: str, node: ast.AST) -> None:
        for capability in capabilities:
            self.found.append((capability, what, node.lineno))

    def _private(self, name: str, receiver: ast.AST | None = None) -> bool:
        """Whether `name`, imported (no `receiver`) or an attribute of `receiver`, reaches private internals:
        it starts with `_` and is not the code's own, that is a name the code defines, reached on a receiver
        that is no known module (a dunder only if the code defines it as a method)."""
        if not name.startswith("_") or name in _INTERNALS or name in _DESCRIPTIVE:
            return False
        if receiver is None or self._resolve(receiver):
            return True
        return name not in (self.methods if name.startswith("__") and name.endswith("__") else self.own)

    def _report(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self._add(_capabilities(alias.name), f"import {alias.name}", node)
                if any(self._private(part) for part in alias.name.split(".")):
                    self._add(("dynamic_code",), f"import {alias.name} (private internals)", node)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            if module != "__future__" and any(self._private(part) for part in
                                              [*(node.module or "").split("."), *(a.name for a in node.names)]):
                self._add(("dynamic_code",), f"from {module} import {', '.join(a.name for a in node.names)}"
                                             " (private internals)", node)
            for alias in node.names:
                full = f"{node.module}.{alias.name}" if alias.name != "*" else node.module or ""
                caps = _capabilities(full) if not node.level else ()
                if alias.name == "*" and not node.level:
                    caps = _capabilities_under(full)
                self._add(caps, f"from {module} import {alias.name}", node)
        elif isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)) and not isinstance(node.ctx, ast.Store):
            self._reference(node)
        elif isinstance(node, ast.Call):
            self._reference(node)
            self._call(node)

    def _capabilities_of(self, node: ast.AST) -> set[str]:
        return {cap for name in self._resolve(node) for cap in _capabilities(name)}

    def _reference(self, node) -> None:
        """Report what `node` names, unless the longer chain it starts (`os` in `os.system`) says as much."""
        parent = self.parents.get(node)
        if not (isinstance(parent, (ast.Attribute, ast.Subscript)) and parent.value is node
                and self._capabilities_of(node) <= self._capabilities_of(parent)):
            for name in self._resolve(node):
                self._add(_capabilities(name), _shown(name, node), node)
        if isinstance(node, ast.Attribute) and node.attr in _METHODS and not self._resolve(node.value):
            self._add(_METHODS[node.attr], f"{_source(node)} (judged by its name)", node)
        if isinstance(node, ast.Attribute) and node.attr in _INTERNALS:
            self._add(("dynamic_code",), f"{_source(node)} (the interpreter's internals)", node)
        if isinstance(node, ast.Attribute) and self._private(node.attr, node.value):
            self._add(("dynamic_code",), f"{_source(node)} (private internals)", node)
        if isinstance(node, ast.Name) and node.id == "__builtins__":
            self._add(("dynamic_code",), "__builtins__", node)

    def _call(self, node: ast.Call) -> None:
        functions = self._resolve(node.func)
        what = f"{_source(node.func)}(...)"
        if functions & _DYNAMIC_ATTRIBUTE and (len(node.args) < 2 or _constant_string(node.args[1]) is None):
            self._add(("dynamic_code",), f"{_source(node.func)} with a name computed at run time", node)
        elif functions & _DYNAMIC_ATTRIBUTE and self._private(_constant_string(node.args[1]), node.args[0]):
            self._add(("dynamic_code",), f"{_source(node.func)} of {node.args[1].value!r} (private internals)", node)
        if functions & _CODE_RUNNERS and node.args:
            code = _constant_string(node.args[0])
            if code is not None:
                try:
                    inner = _Analysis(ast.parse(code)).run()
                except SyntaxError:
                    inner = []
                for capability, inner_what, _ in inner:
                    self._add((capability,), f"{inner_what} in the string given to {_source(node.func)}", node)
        if isinstance(node.func, ast.Attribute) and not self._resolve(node.func.value):
            if node.func.attr in _WRITERS and (node.args or node.keywords):
                self._add(("files",), f"{what} (judged by its name: writes to a path or file)", node)
            if node.func.attr in _EXPRESSION_METHODS and (node.args or node.keywords):
                self._add(("dynamic_code",), f"{what} (judged by its name: runs an expression given as text)", node)
        if any(f.endswith(".DataLoader") for f in functions):
            workers = next((k.value for k in node.keywords if k.arg == "num_workers"), None)
            if workers is not None and not (isinstance(workers, ast.Constant) and workers.value == 0):
                self._add(("concurrency",), f"{what} with worker processes", node)
        if self._writes_out(node, functions) and any(self._is_tainted(a) for a in [*node.args, *node.keywords]):
            self._add(("output",), f"{what} of a value derived from site data", node)

    def _writes_out(self, node: ast.Call, functions: set[str]) -> bool:
        if functions & _PRINTERS or any(f.startswith(("logging.", "pprint.", "traceback.print")) for f in functions):
            return True
        return isinstance(node.func, ast.Attribute) and node.func.attr in _LOG_METHODS | {"write", "writelines"} \
            and not (functions - {f for f in functions if f.startswith(("sys.", "logging."))})


def _own_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(methods: names of the functions and classes the code defines; own: those and every name or
    attribute it assigns and every parameter)."""
    methods = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    own = set(methods)
    for n in ast.walk(tree):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            own.add(n.id)
        elif isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store):
            own.add(n.attr)
        elif isinstance(n, ast.arg):
            own.add(n.arg)
    return methods, own


def _builtin(name: str) -> str:
    return "builtins" if name == "__builtins__" else f"builtins.{name}"


def _normal(name: str) -> str:
    """`__builtins__.x`, `builtins.__builtins__.x` -> `builtins.x`; `posixpath.x` -> `os.path.x`; `posix.x` -> `os.x`."""
    for prefix, replacement in (("__builtins__", "builtins"), ("builtins.__builtins__", "builtins"),
                                ("posixpath", "os.path"), ("posix", "os")):
        if name == prefix or name.startswith(prefix + "."):
            name = replacement + name[len(prefix):]
    return name


def _capabilities(name: str) -> tuple[str, ...]:
    """Capabilities of a qualified name: those of the longest table entry it equals or lies under,
    read from its start and again from each `_MODULES` module in its chain (`x.os.system` -> `os.system`)."""
    parts = _normal(name).split(".")
    caps: list[str] = []
    for start in range(len(parts)):
        if start == 0 or parts[start] in _MODULES:
            caps += _table_capabilities(_normal(".".join(parts[start:])))
    return tuple(dict.fromkeys(caps))


def _table_capabilities(name: str) -> tuple[str, ...]:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in _NAMES:
            return _NAMES[".".join(parts[:end])]
    return ()


def _capabilities_under(module: str) -> tuple[str, ...]:
    """Capabilities a star import of `module` brings: its own and those of every name under it."""
    module = _normal(module)
    caps = list(_capabilities(module))
    caps += [cap for name, found in _NAMES.items() if name.startswith(module + ".") for cap in found]
    return tuple(dict.fromkeys(caps))


def _shown(name: str, node: ast.AST) -> str:
    written = _source(node)
    return written if written == name else f"{written} ({name})"


def _source(node: ast.AST) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 60 else text[:57] + "..."


def _constant_string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
