"""Runs the task's tests for `run_tests`, in a sandbox of its own, apart from the model's code.

Standard library only. argv: request fd, answer fd, JSON list of the model's module names, test
files. Each of those modules is a stand-in here whose functions are calls into the model's
sandbox: arguments go there as literals, results come back as literals. So the model's code never
runs in this process, cannot see or change these tests, and cannot fake a pass: a test passes when
its function returns here. One JSON line per test goes to the results descriptor (our stdout at
start; the tests' own prints are moved to stderr).
"""

import ast
import builtins
import importlib.util
import json
import os
import sys
import traceback
import types

_MAX_LINE = 1 << 22


class WorkerGone(RuntimeError):
    pass


class RemoteError(Exception):
    pass


class Channel:
    def __init__(self, request_fd, answer_fd):
        self.requests = os.fdopen(request_fd, "w", encoding="utf-8")
        self.answers = os.fdopen(answer_fd, "r", encoding="utf-8")
        self.seq = 0

    def ask(self, **msg):
        self.seq += 1
        try:
            self.requests.write(json.dumps({"id": self.seq, **msg}) + "\n")
            self.requests.flush()
        except OSError:
            raise WorkerGone("the solution's process has exited") from None
        while True:
            line = self.answers.readline(_MAX_LINE)
            if not line:
                raise WorkerGone("the solution's process has exited")
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            if isinstance(answer, dict) and answer.get("id") == self.seq:
                break
        if "error" in answer:
            cls = getattr(builtins, str(answer["error"]), None)
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                cls = RemoteError
            raise cls(f"{answer['error']}: {answer.get('message', '')} (raised by the solution)")
        if "value" in answer:
            return ast.literal_eval(str(answer["value"]))
        return RemoteFunction(self, msg["module"], msg["name"])


class RemoteFunction:
    def __init__(self, channel, module, name):
        self.channel, self.module, self.__name__ = channel, module, name

    def __call__(self, *args, **kwargs):
        return self.channel.ask(op="call", module=self.module, name=self.__name__,
                                args=repr(args), kwargs=repr(kwargs))


class RemoteModule(types.ModuleType):
    def __init__(self, name, channel):
        super().__init__(name)
        self._channel = channel

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._channel.ask(op="get", module=self.__name__, name=name)


def run_file(path, report):
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except BaseException as e:  # e.g. `from solution import f` where f is missing
        report(path, "<module>", False, _describe(e))
        return
    for test_name, fn in list(vars(module).items()):
        if test_name.startswith("test") and isinstance(fn, types.FunctionType) and fn.__module__ == name:
            try:
                fn()
                report(path, test_name, True, "")
            except BaseException as e:
                report(path, test_name, False, _describe(e))


def _describe(e):
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno}: {tb[-1].line})" if tb else ""
    return f"{type(e).__name__}: {e}"[:2000] + where


def main():
    request_fd, answer_fd, modules, tests = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4:]
    results = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    channel = Channel(request_fd, answer_fd)
    for name in modules:
        sys.modules[name] = RemoteModule(name, channel)
    sys.path.insert(0, os.getcwd())  # helper modules beside the tests

    def report(path, test, passed, message):
        line = {"file": os.path.basename(path), "test": test, "passed": passed, "message": message}
        results.write(json.dumps(line) + "\n")
        results.flush()

    for path in tests:
        run_file(path, report)


main()
