# Runs a command on a fresh pty as its controlling terminal (the way a terminal emulator would), sets
# its window size, resizes it once the command prints a marker, then types a line. Prints everything
# the command wrote to the terminal and exits with its status. Used by agent-attach.test.ts.
import fcntl, os, select, struct, subprocess, sys, termios, time

marker, after = sys.argv[1].encode(), sys.argv[2].encode()
command = sys.argv[3:]
master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 30, 100, 0, 0))
child = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                         preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
os.close(slave)
output = b''
resized = False
deadline = time.time() + 120
while time.time() < deadline:
    ready, _, _ = select.select([master], [], [], 0.1)
    if ready:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    if not resized and marker in output:
        resized = True
        # The kernel sends SIGWINCH to the terminal's foreground process group.
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack('HHHH', 50, 132, 0, 0))
        time.sleep(0.5)
        os.write(master, after)
sys.stdout.buffer.write(output)
sys.exit(child.wait(timeout=30))
