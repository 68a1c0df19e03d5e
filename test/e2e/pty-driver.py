#!/usr/bin/env python3
"""Drive a program through a real pty, like a person at a terminal would.

usage: pty-driver.py STEPS_JSON -- ARGV...
STEPS_JSON is a list of steps, each with any of:
  {"send": "text"}             write to the terminal (\x03 is Ctrl-C)
  {"expect": "regex", "timeout": s}  wait until the output since the last match matches
  {"resize": [rows, cols]}     set the terminal's window size (the kernel sends SIGWINCH)
  {"sleep": s}
Prints one JSON object: {"exit": code, "steps": [{"ok": bool, "output": text, "elapsed": s}], "rest": text}.
The program's exit code is 128+n for death by signal n. Stops at the first failed expect and kills it.
"""
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def main():
    steps = json.loads(sys.argv[1])
    argv = sys.argv[sys.argv.index("--") + 1:]
    pid, master = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    set_size(master, 24, 80)
    buffer = b""
    report = []
    failed = False

    def read_some(deadline):
        nonlocal buffer
        wait = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([master], [], [], wait)
        if not ready:
            return False
        try:
            data = os.read(master, 65536)
        except OSError:
            return None
        if not data:
            return None
        buffer += data
        return True

    for step in steps:
        start = time.monotonic()
        if "send" in step:
            os.write(master, step["send"].encode())
            report.append({"ok": True, "output": "", "elapsed": 0})
        elif "resize" in step:
            rows, cols = step["resize"]
            set_size(master, rows, cols)
            report.append({"ok": True, "output": "", "elapsed": 0})
        elif "sleep" in step:
            time.sleep(step["sleep"])
            report.append({"ok": True, "output": "", "elapsed": step["sleep"]})
        elif "expect" in step:
            pattern = re.compile(step["expect"].encode(), re.M)
            deadline = start + step.get("timeout", 10)
            match = None
            while True:
                match = pattern.search(buffer)
                if match or time.monotonic() >= deadline:
                    break
                if read_some(deadline) is None:
                    match = pattern.search(buffer)
                    break
            output = buffer[: match.end()] if match else buffer
            buffer = buffer[match.end():] if match else b""
            report.append({"ok": bool(match), "output": output.decode("utf-8", "replace"), "elapsed": round(time.monotonic() - start, 3)})
            if not match:
                failed = True
                break
    if failed:
        os.kill(pid, signal.SIGKILL)
    # Drain until the program exits (bounded), then collect its status.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        got = read_some(deadline)
        if got is None:
            break
    try:
        _, status = os.waitpid(pid, os.WNOHANG)
        if _ == 0:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        status = 0
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    print(json.dumps({"exit": code, "steps": report, "rest": buffer.decode("utf-8", "replace")}))


main()
