/**
 * The fallback command channel, used while no envy-agent binary is built (dist/envy-agent-ARCH):
 * envy-init runs /bin/sh of the image on the agent's virtio-serial port, and the host writes one
 * command line per exec and reads the output up to a marker carrying the exit code. It gives exec
 * with argv, env, cwd, user and exit codes; not separate stderr (merged into stdout), stdin,
 * signals or a pty: those need the agent (docs/vm.md). One client at a time: qemu's socket
 * accepts one connection, so callers hold the environment's channel lock.
 */
import { connect, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { EnvyError } from '../../errors.js';
import type { ProcessSpec } from '../types.js';

const MARK_PREFIX = '\x1eenvy-exit-';

function quote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** One shell line that runs the process as the spec says and replaces the subshell with it. */
export function commandLine(spec: ProcessSpec): string {
  const env = Object.entries(spec.env)
    .filter(([name]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
    .map(([name, value]) => quote(`${name}=${value}`));
  const user = !spec.root && spec.identity ? ['setpriv', `--reuid=${spec.identity.uid}`, `--regid=${spec.identity.gid}`, '--init-groups', '--'] : [];
  const cwd = quote(spec.cwd);
  return `mkdir -p ${cwd} 2>/dev/null; cd ${cwd} && exec env -i ${env.join(' ')} ${user.join(' ')} ${spec.argv.map(quote).join(' ')}`;
}

export class ShellChannel {
  private buffer = '';
  private waiter: ((text: string) => void) | undefined;
  private closed = false;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      this.waiter?.(chunk);
    });
    const onEnd = () => {
      this.closed = true;
      this.waiter?.('');
    };
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onEnd);
  }

  static connect(path: string, timeoutMs: number): Promise<ShellChannel> {
    return new Promise((resolve, reject) => {
      const socket = connect(path);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new EnvyError('RUNTIME', `no answer from the VM's channel ${path} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve(new ShellChannel(socket));
      });
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
  }

  /**
   * Run one shell line; output goes to `onOutput` as it comes; resolves to the exit code, or
   * undefined when `timeoutMs` passes (the shell is not up yet, or the command still runs).
   */
  run(line: string, onOutput: (text: string) => void, timeoutMs?: number): Promise<number | undefined> {
    const mark = `${MARK_PREFIX}${randomBytes(6).toString('hex')} `;
    // The mark is a control character, then letters, digits and '-': nothing to escape.
    const pattern = new RegExp(`${mark}(\\d+)\\n`);
    this.buffer = '';
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (code: number | undefined) => {
        if (timer) clearTimeout(timer);
        this.waiter = undefined;
        resolve(code);
      };
      const drain = () => {
        const match = pattern.exec(this.buffer);
        if (match) {
          onOutput(this.buffer.slice(0, match.index));
          this.buffer = this.buffer.slice(match.index + match[0].length);
          finish(Number(match[1]));
          return;
        }
        // Hold back what could be the start of the marker; pass the rest on.
        const hold = this.buffer.lastIndexOf('\x1e');
        const safe = hold >= 0 && this.buffer.length - hold <= mark.length + 4 ? hold : this.buffer.length;
        if (safe > 0) {
          onOutput(this.buffer.slice(0, safe));
          this.buffer = this.buffer.slice(safe);
        }
        if (this.closed) finish(undefined);
      };
      this.waiter = drain;
      if (timeoutMs !== undefined) timer = setTimeout(() => finish(undefined), timeoutMs);
      this.socket.write(`( ${line} ) </dev/null 2>&1; printf '\\036${mark.slice(1)}%d\\n' $?\n`);
    });
  }

  /** Ask init to stop everything and power off (it does on SIGUSR2). */
  requestPowerOff(): void {
    if (!this.closed) this.socket.write('kill -USR2 1\n');
  }

  close(): void {
    this.socket.end();
    this.socket.destroy();
  }
}
