import { describe, expect, it } from 'vitest';
import { loadError, MINIMAL } from './helpers.js';

interface BadCase {
  what: string;
  yaml: string | Buffer;
  /** `LINE:COL` of the first problem. */
  at: string;
  message: string;
  hint?: string;
  code?: string;
}

const lolBomb = ['name: lol', 'base: {host: true}', 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
  .concat(Array.from({ length: 8 }, (_, i) => `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [${Array(9).fill('*' + String.fromCharCode(97 + i)).join(',')}]`))
  .join('\n');

const cases: BadCase[] = [
  { what: 'duplicate keys', yaml: 'name: a\nname: b\nbase: {host: true}\n', at: '2:1', message: 'duplicate key "name"' },
  { what: 'duplicate quoted keys', yaml: 'name: a\nbase: {host: true}\nenv:\n  "A B": 1\n  "A B": 2\n', at: '5:3', message: 'duplicate key "A B"' },
  { what: 'tabs for indentation', yaml: 'name: a\nbase:\n\thost: true\n', at: '3:1', message: 'tab character used for indentation', hint: 'spaces' },
  { what: 'YAML syntax error', yaml: 'name: a\nbase: {host: true\nnetwork: host\n', at: '3:1', message: 'YAML syntax error' },
  { what: 'an alias', yaml: 'name: &n demo\nbase: {host: true}\nworkdir: *n\n', at: '3:10', message: 'alias *n is not supported' },
  { what: 'a merge key', yaml: 'name: demo\nbase: {host: true}\nuser:\n  <<: {name: dev}\n', at: '4:3', message: 'user["<<"]: merge keys (<<) are not supported' },
  { what: 'an empty file', yaml: '', at: '1:1', message: 'the file is empty', hint: 'envy init' },
  { what: 'only comments', yaml: '# nothing here\n# still nothing\n', at: '1:1', message: 'the file is empty' },
  { what: 'a list at the top level', yaml: '- name: demo\n', at: '1:1', message: '(top level): expected a mapping of fields (name, base, ...), got a list' },
  { what: 'a scalar at the top level', yaml: 'hello\n', at: '1:1', message: 'got the scalar "hello"' },
  { what: 'two documents', yaml: MINIMAL + '---\nname: other\n', at: '3:1', message: 'a second YAML document starts here' },
  { what: 'a misspelt top-level key', yaml: MINIMAL + 'pakages:\n  apt: [git]\n', at: '3:1', message: 'pakages: unknown field', hint: 'did you mean "packages"?' },
  { what: 'a misspelt nested key', yaml: MINIMAL + 'setup:\n  - run: make\n    usr: root\n', at: '5:5', message: 'setup[0].usr: unknown field', hint: 'did you mean "user"?' },
  { what: 'an unknown key with no near match', yaml: MINIMAL + 'zzzzzz: 1\n', at: '3:1', message: 'zzzzzz: unknown field', hint: 'allowed fields here: name, base' },
  { what: 'a missing name', yaml: 'base: {host: true}\n', at: '1:1', message: 'name: required field is missing', hint: 'name: my-app' },
  { what: 'a name that is not a DNS label', yaml: 'name: My_App\nbase: {host: true}\n', at: '1:7', message: 'name: expected a DNS label', hint: 'try "my-app"' },
  { what: 'a wrong type', yaml: MINIMAL + 'packages:\n  apt: git\n', at: '4:8', message: 'packages.apt: expected a list, got "git"' },
  { what: 'a bad enum value', yaml: MINIMAL + 'network: hots\n', at: '3:10', message: 'network: expected one of host, none, private; got "hots"', hint: 'did you mean "host"?' },
  { what: 'base with no kind', yaml: 'name: demo\nbase: {}\n', at: '2:1', message: 'base: needs exactly one of "debian", "image", "oci", "host"' },
  { what: 'an empty base', yaml: 'name: demo\nbase:\n', at: '2:1', message: 'base: expected a mapping, got nothing (an empty value)' },
  { what: 'base as a string', yaml: 'name: demo\nbase: bookworm\n', at: '2:7', message: 'base: expected a mapping, got "bookworm"' },
  { what: 'base with two kinds', yaml: 'name: demo\nbase:\n  debian: bookworm\n  image: debian:12\n', at: '4:3', message: 'base: has both "debian" and "image"; exactly one is allowed' },
  { what: 'a snapshot without debian', yaml: 'name: demo\nbase: {image: "debian:12", snapshot: 20240101T000000Z}\n', at: '2:28', message: 'base.snapshot: requires "debian" as well' },
  { what: 'a malformed snapshot', yaml: 'name: demo\nbase: {debian: bookworm, snapshot: "2024-01-01"}\n', at: '2:36', message: 'base.snapshot: expected a snapshot timestamp like 20240101T000000Z; got "2024-01-01"' },
  { what: 'a malformed image reference', yaml: 'name: demo\nbase:\n  image: "Debian:Book worm"\n', at: '3:10', message: 'base.image: expected an OCI image reference' },
  { what: 'host: false', yaml: 'name: demo\nbase: {host: false}\n', at: '2:14', message: 'base.host: expected true, got false' },
  { what: 'a relative dest', yaml: MINIMAL + 'files:\n  - src: a.sh\n    dest: usr/bin/a\n', at: '5:11', message: 'files[0].dest: expected an absolute path inside the environment' },
  { what: 'a relative workdir', yaml: MINIMAL + 'workdir: src\n', at: '3:10', message: 'workdir: expected an absolute path inside the environment' },
  { what: 'a relative mount target', yaml: MINIMAL + 'mounts:\n  - {volume: cache, target: cache}\n', at: '4:29', message: 'mounts[0].target: expected an absolute path inside the environment' },
  { what: 'a relative workspace', yaml: MINIMAL + 'workspace: src\n', at: '3:12', message: 'workspace: expected an absolute path inside the environment, like /workspace' },
  { what: 'files.src escaping the project', yaml: MINIMAL + 'files:\n  - {src: ../secret, dest: /s}\n', at: '4:11', message: 'files[0].src: "../secret" leaves the project directory' },
  { what: 'files.src escaping through a subdir', yaml: MINIMAL + 'files:\n  - {src: a/../../b, dest: /s}\n', at: '4:11', message: '"a/../../b" leaves the project directory' },
  { what: 'an absolute files.src', yaml: MINIMAL + 'files:\n  - {src: /etc/passwd, dest: /s}\n', at: '4:11', message: 'files[0].src: must be relative to the project directory; got the absolute path "/etc/passwd"' },
  { what: 'an oci path escaping the project', yaml: 'name: demo\nbase: {oci: ../../image.tar}\n', at: '2:13', message: 'base.oci: "../../image.tar" leaves the project directory' },
  { what: 'a setup input escaping the project', yaml: MINIMAL + 'setup:\n  - {run: make, inputs: [../x]}\n', at: '4:26', message: 'setup[0].inputs[0]: "../x" leaves the project directory' },
  { what: 'a port number out of range', yaml: MINIMAL + 'ports: [70000]\n', at: '3:9', message: 'ports[0]: must be at most 65535; got 70000' },
  { what: 'port zero', yaml: MINIMAL + 'ports: [0]\n', at: '3:9', message: 'ports[0]: must be at least 1; got 0' },
  { what: 'a port string out of range', yaml: MINIMAL + 'ports: ["99999:80"]\n', at: '3:9', message: 'ports[0]: port 99999 is out of range; ports are 1 to 65535' },
  { what: 'a malformed port string', yaml: MINIMAL + 'ports: ["80:http"]\n', at: '3:9', message: 'ports[0]: expected a port like 8080, "8080:80" or "5353:53/udp"; got "80:http"' },
  { what: 'a port object without container', yaml: MINIMAL + 'ports:\n  - {host: 8080}\n', at: '4:5', message: 'ports[0].container: required field is missing' },
  { what: 'a host port published twice', yaml: MINIMAL + 'ports: [8080, "8080:80"]\n', at: '3:15', message: 'ports[1]: host port 8080/tcp is already published by ports[0]' },
  { what: 'a memory size with a bad unit', yaml: MINIMAL + 'resources: {memory: 2x}\n', at: '3:21', message: 'resources.memory: expected a size like 512m, 2g or a number of bytes; got "2x"' },
  { what: 'a zero memory size', yaml: MINIMAL + 'resources:\n  memory: 0g\n', at: '4:11', message: 'resources.memory: expected a size greater than zero' },
  { what: 'a negative memory size', yaml: MINIMAL + 'resources: {memory: -5}\n', at: '3:21', message: 'resources.memory: must be at least 1; got -5' },
  { what: 'duplicate mount targets', yaml: MINIMAL + 'mounts:\n  - {volume: a, target: /data}\n  - {tmpfs: /data/}\n', at: '5:13', message: 'mounts[1].tmpfs: target "/data" is already used by mounts[0]' },
  { what: 'a mount over the workspace', yaml: MINIMAL + 'mounts:\n  - {volume: a, target: /workspace}\n', at: '4:25', message: '"/workspace" is the workspace path' },
  { what: 'a volume without target', yaml: MINIMAL + 'mounts:\n  - volume: a\n', at: '4:5', message: 'mounts[0].volume: requires "target" as well' },
  { what: 'a mount of two kinds', yaml: MINIMAL + 'mounts:\n  - {volume: a, bind: ./b, target: /x}\n', at: '4:17', message: 'mounts[0]: has both "volume" and "bind"' },
  { what: 'a !!js/function tag', yaml: MINIMAL + 'workdir: !!js/function "function () {}"\n', at: '3:24', message: 'workdir: YAML tag !!js/function is not allowed' },
  { what: 'a custom tag', yaml: MINIMAL + 'network: !custom host\n', at: '3:18', message: 'network: YAML tag !custom is not allowed' },
  { what: 'an undefined variable', yaml: MINIMAL + 'env:\n  TOKEN: ${API_TOKEN}\n', at: '4:10', message: 'env.TOKEN: variable API_TOKEN is not set', hint: '${API_TOKEN:-default}' },
  { what: 'a ${VAR:?message}', yaml: MINIMAL + 'workdir: "${WORKDIR:?set WORKDIR to the checkout path}"\n', at: '3:10', message: 'workdir: WORKDIR: set WORKDIR to the checkout path' },
  { what: 'an unterminated ${', yaml: MINIMAL + 'env:\n  A: ${HOME\n', at: '4:6', message: 'env.A: unterminated "${"' },
  { what: 'a bad env variable name', yaml: MINIMAL + 'env:\n  1BAD: x\n', at: '4:3', message: 'env["1BAD"]: invalid name; expected an environment variable name' },
  { what: 'a null env value', yaml: MINIMAL + 'env:\n  EMPTY:\n', at: '4:3', message: 'env.EMPTY: expected a string, a number or true or false, got nothing (an empty value)' },
  { what: 'a number as a setup step', yaml: MINIMAL + 'setup:\n  - 42\n', at: '4:5', message: 'setup[0]: expected a string or a mapping, got 42' },
  { what: 'a duration without a unit', yaml: MINIMAL + 'services:\n  web: {run: x, stopGrace: 10}\n', at: '4:28', message: 'services.web.stopGrace: expected a duration like 500ms, 5s, 2m or 1h, got 10' },
  { what: 'a zero readiness interval', yaml: MINIMAL + 'services:\n  web:\n    run: x\n    ready: {run: y, interval: 0s}\n', at: '6:31', message: 'services.web.ready.interval: expected a duration greater than zero' },
  { what: 'a bad service name', yaml: MINIMAL + 'services:\n  Web_1: x\n', at: '4:3', message: 'services.Web_1: invalid name; expected a service name' },
  { what: 'a misspelt backend', yaml: MINIMAL + 'backend: vn\n', at: '3:10', message: 'backend: expected one of namespace, vm; got "vn"', hint: 'did you mean "vm"?' },
  { what: 'a backend of the wrong type', yaml: MINIMAL + 'backend: 3\n', at: '3:10', message: 'backend: expected a string or a mapping, got 3' },
  { what: 'a bad VM architecture', yaml: MINIMAL + 'backend: {type: vm, arch: mips}\n', at: '3:27', message: 'backend.arch: expected one of x86_64, aarch64, amd64, arm64; got "mips"' },
  { what: 'a kernel file that does not exist', yaml: MINIMAL + 'backend: {type: vm, kernel: vm/vmlinux}\n', at: '3:29', message: 'backend.kernel: the kernel file vm/vmlinux does not exist' },
  { what: 'a kernel file outside the project', yaml: MINIMAL + 'backend: {type: vm, kernel: ../vmlinux}\n', at: '3:29', message: 'backend.kernel: "../vmlinux" leaves the project directory' },
  { what: 'a 9p workspace without a VM', yaml: MINIMAL + 'workspace:\n  sync: 9p\n', at: '4:9', message: 'workspace.sync: `9p` shares the project into a VM and needs `backend: vm`', hint: 'backend: vm' },
  { what: 'VM options on the namespace backend', yaml: MINIMAL + 'backend:\n  type: namespace\n  cpus: 4\n', at: '5:3', message: 'backend.cpus: only applies to `type: vm`' },
  { what: 'a decimal file mode', yaml: MINIMAL + 'files:\n  - {src: a, dest: /a, mode: 0955}\n', at: '4:30', message: 'files[0].mode: expected octal permission bits like 0755; got 0955' },
  { what: 'a negative uid', yaml: MINIMAL + 'user: {uid: -1}\n', at: '3:13', message: 'user.uid: must be at least 0; got -1' },
  { what: 'an infinite number', yaml: MINIMAL + 'resources: {cpus: .inf}\n', at: '3:19', message: 'resources.cpus: .inf is not a finite number' },
  { what: 'a hook that is a mapping', yaml: MINIMAL + 'hooks:\n  onCreate: {run: x}\n', at: '4:13', message: 'hooks.onCreate: expected a string or a list, got a mapping' },
  { what: 'a NUL byte', yaml: Buffer.from('name: demo\nbase: {host: true}\nx\u0000y\n'), at: '3:2', message: 'file contains a NUL byte', code: 'CONFIG_READ' },
  { what: 'invalid UTF-8', yaml: Buffer.concat([Buffer.from('name: demo\n  # caf'), Buffer.from([0xc3, 0x28]), Buffer.from('\n')]), at: '2:8', message: 'invalid UTF-8 (byte 0xc3)', code: 'CONFIG_READ' },
  { what: 'UTF-16', yaml: Buffer.from('\ufeffname: demo\n', 'utf16le'), at: '1:1', message: 'not UTF-8 (it looks like UTF-16', code: 'CONFIG_READ' },
];

describe('env.yaml errors', () => {
  it('covers at least 30 distinct bad inputs', () => {
    expect(new Set(cases.map((c) => c.what)).size).toBe(cases.length);
    expect(cases.length).toBeGreaterThanOrEqual(30);
  });

  it.each(cases)('rejects $what at $at', async ({ yaml, at, message, hint, code }) => {
    const error = await loadError(yaml);
    expect(error.code).toBe(code ?? 'CONFIG_INVALID');
    expect(error.message).toContain(`env.yaml:${at}: `);
    expect(error.message.startsWith(`env.yaml:${at}: `)).toBe(true);
    expect(error.message).toContain(message);
    if (hint !== undefined) expect(error.hint).toContain(hint);
    expect(error.exitCode).toBe(2);
  });

  it('reports every problem, sorted by position, the first in the message and the rest in details', async () => {
    const error = await loadError('name: Bad_Name\nbase: {host: true}\nnetwork: hots\npakages: {}\nports: [70000]\n');
    expect(error.message).toMatch(/^env\.yaml:1:7: name: .* \(and 3 more problems\)$/);
    expect(error.details).toEqual([
      expect.stringMatching(/^env\.yaml:3:10: network: expected one of host, none, private; got "hots" \(did you mean "host"\?\)$/),
      expect.stringMatching(/^env\.yaml:4:1: pakages: unknown field \(did you mean "packages"\?\)$/),
      expect.stringMatching(/^env\.yaml:5:9: ports\[0\]: must be at most 65535; got 70000$/),
    ]);
  });

  it('rejects a billion-laughs bomb quickly, at its first alias', async () => {
    const started = performance.now();
    const error = await loadError(lolBomb);
    expect(performance.now() - started).toBeLessThan(1000);
    expect([error.message, ...error.details].some((line) => line.startsWith('env.yaml:4:8: b[0]: alias *a is not supported'))).toBe(true);
  });

  it('does not pile schema complaints on a value whose interpolation already failed', async () => {
    const error = await loadError(MINIMAL + 'workdir: ${NOPE}\n');
    expect(error.message).toBe('env.yaml:3:10: workdir: variable NOPE is not set');
    expect(error.details).toEqual([]);
  });
});
