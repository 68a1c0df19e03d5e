/**
 * The template suite, shared by templates.test.ts and templates-heavy.test.ts (the two templates with
 * the largest apt installs, kept apart so CI can see and budget them). Every template in templates/ does its job on a real project in its language, as the unprivileged
 * test user: `envy init --template NAME` in a fresh directory holding a small program, `envy up`
 * (a cold build from Debian's mirror), `envy exec` builds and runs the program with the template's
 * toolchain, files it writes to the workspace belong to the host user, and `envy down --rm` removes
 * the environment. Only Debian's mirror is reachable from the environment (no crates.io, proxy.golang.org
 * or PyPI), so the programs use local dependencies only: a `file:` npm package, a wheel in the project.
 *
 * All templates share the run's ENVY_HOME: the Debian base is bootstrapped once and apt's .deb cache
 * serves the packages the templates have in common (build-essential, git, ...).
 */
import { execFileSync } from 'node:child_process';
import { lstatSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { debianHome, envy, envyRoot, isRoot, testUser, userTempDir, type RunResult } from '../harness.js';

interface TemplateCase {
  template: string;
  /** The project: path → content. */
  files: Record<string, string>;
  /** Run with `envy exec -- sh -c` in the workspace: build and run the program with the template's toolchain. */
  build: string;
  /** What `build` must print. */
  output: RegExp;
  /** Files the build writes into the workspace: each must exist on the host, owned by the host user. */
  written: string[];
  /** What `envy up` must print besides the summary (hooks' output). */
  upOutput?: RegExp;
  /** What `envy up`'s plain progress must show (on stderr). */
  upProgress?: RegExp;
  /** After the build: a further check on the running environment. */
  more?: (run: (args: string[]) => Promise<RunResult>, project: string) => Promise<void>;
}

/** A pure-Python wheel (a zip with the dist-info files pip needs), made with the host's python3. */
function writeWheel(path: string, module: string, version: string, source: string): void {
  mkdirSync(dirname(path), { recursive: true });
  const info = `${module}-${version}.dist-info`;
  const members: Record<string, string> = {
    [`${module}.py`]: source,
    [`${info}/METADATA`]: `Metadata-Version: 2.1\nName: ${module}\nVersion: ${version}\n`,
    [`${info}/WHEEL`]: 'Wheel-Version: 1.0\nGenerator: envy-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
    [`${info}/RECORD`]: `${module}.py,,\n${info}/METADATA,,\n${info}/WHEEL,,\n${info}/RECORD,,\n`,
  };
  const script = 'import json, sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], "w") as z:\n    for name, text in json.loads(sys.argv[2]).items(): z.writestr(name, text)\n';
  execFileSync('python3', ['-c', script, path, JSON.stringify(members)]);
}

const cases: TemplateCase[] = [
  {
    template: 'c',
    files: {
      'hello.c': '#include <stdio.h>\nint main(void) {\n  FILE *f = fopen("out-c.txt", "w");\n  if (!f) return 1;\n  fputs("written by c\\n", f);\n  fclose(f);\n  printf("hello from c, C%ld\\n", __STDC_VERSION__);\n  return 0;\n}\n',
      'CMakeLists.txt': 'cmake_minimum_required(VERSION 3.20)\nproject(hello C)\nadd_executable(hello-cmake hello.c)\n',
    },
    // The template's compiler ($CC), then its build systems (cmake with ninja).
    build: '$CC -Wall -Werror -o hello hello.c && ./hello && cmake -S . -B build -G Ninja >/dev/null && cmake --build build >/dev/null && ./build/hello-cmake',
    output: /^hello from c, C\d+L?\nhello from c, C\d+L?\n$/,
    written: ['hello', 'out-c.txt', 'build/hello-cmake'],
  },
  {
    template: 'go',
    files: {
      'go.mod': 'module example.com/hello\n\ngo 1.19\n',
      'main.go': 'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() {\n\tif err := os.WriteFile("out-go.txt", []byte("written by go\\n"), 0o644); err != nil {\n\t\tpanic(err)\n\t}\n\tfmt.Println("hello from go")\n}\n',
    },
    // `go install` puts the binary in $GOPATH/bin, which the template's PATH names.
    build: 'go vet ./... && go build -o hello . && ./hello && go install . && command -v hello && hello',
    output: /^hello from go\n\/cache\/go\/bin\/hello\nhello from go\n$/,
    // No other template installs golang-go: its archives are always downloaded, and the progress shows them.
    upProgress: /^download apt archives: [\d.]+ [KM]iB \/ [\d.]+ MiB$/m,
    written: ['hello', 'out-go.txt'],
  },
  {
    template: 'node',
    files: {
      'package.json': JSON.stringify({ name: 'app', version: '1.0.0', private: true, scripts: { start: 'node main.js' }, dependencies: { greet: 'file:greet' } }, null, 2),
      // What npm 9 writes for a `file:` dependency: `npm ci` installs it without the registry.
      'package-lock.json': JSON.stringify(
        {
          name: 'app',
          version: '1.0.0',
          lockfileVersion: 3,
          requires: true,
          packages: {
            '': { name: 'app', version: '1.0.0', dependencies: { greet: 'file:greet' } },
            greet: { version: '1.0.0' },
            'node_modules/greet': { resolved: 'greet', link: true },
          },
        },
        null,
        2,
      ),
      'greet/package.json': JSON.stringify({ name: 'greet', version: '1.0.0', main: 'index.js' }),
      'greet/index.js': "module.exports = (who) => `hello from ${who}`;\n",
      'main.js': "require('fs').writeFileSync('out-node.txt', 'written by node\\n');\nconsole.log(require('greet')('node'), process.env.NODE_ENV);\n",
    },
    // onCreate ran `npm ci`: node_modules/greet is there before anything here runs.
    build: 'npm start --silent',
    output: /^hello from node development\n$/,
    written: ['out-node.txt', 'node_modules/greet'],
  },
  {
    template: 'python',
    files: {
      'requirements.txt': './wheels/greet-0.1-py3-none-any.whl\n',
      'main.py': 'import sys\nimport greet\n\nwith open("out-python.txt", "w") as f:\n    f.write("written by python\\n")\nprint(greet.hello(), sys.prefix)\n',
    },
    build: 'python3 main.py && python3 -m compileall -q . && ls __pycache__',
    output: /^hello from python 0\.1 \/opt\/venv\nmain\.cpython-3\d+\.pyc\n$/,
    written: ['out-python.txt', '__pycache__'],
    // requirements.txt is the setup step's input: a new version of the wheel rebuilds that step and the user step only.
    more: async (run, project) => {
      writeWheel(join(project, 'wheels/greet-0.2-py3-none-any.whl'), 'greet', '0.2', 'def hello():\n    return "hello from python 0.2"\n');
      writeFileSync(join(project, 'requirements.txt'), './wheels/greet-0.2-py3-none-any.whl\n');
      if (isRoot()) execFileSync('chown', ['-R', `${testUser()}:`, project]);
      const up = await run(['up']);
      expect(up.code, up.stderr).toBe(0);
      expect(up.stdout).toMatch(/is running \(image [0-9a-f]{12}, 2 steps built\)/);
      expect((await run(['exec', '--', 'python3', '-c', 'import greet; print(greet.hello())'])).stdout).toBe('hello from python 0.2\n');
    },
  },
  {
    template: 'rust',
    files: {
      'Cargo.toml': '[package]\nname = "hello-rs"\nversion = "0.1.0"\nedition = "2021"\n\n[dependencies]\n',
      'src/main.rs': 'fn main() {\n    std::fs::write("out-rust.txt", "written by rust\\n").expect("write");\n    println!("hello from rust");\n}\n',
    },
    // `cargo install` puts the binary in $CARGO_HOME/bin, which the template's PATH names.
    build: 'cargo build --offline -q && /cache/target/debug/hello-rs && cargo install --offline -q --path . && command -v hello-rs && hello-rs',
    output: /^hello from rust\n\/cache\/cargo\/bin\/hello-rs\nhello from rust\n$/,
    written: ['Cargo.lock', 'out-rust.txt'],
  },
  {
    template: 'default',
    files: { Makefile: 'greeting.txt:\n\techo "hello from make" > $@\n\n.PHONY: show\nshow: greeting.txt\n\t@cat greeting.txt\n\t@jq -n \'"hello from jq"\'\n' },
    build: 'make -s show',
    output: /^hello from make\n"hello from jq"\n$/,
    written: ['greeting.txt'],
    upOutput: /git version [\d.]+\nGNU Make [\d.]+/,
    // A second project with the same packages is all cache hits, and its env.lock still pins every version.
    more: async (_run, project) => {
      const second = userTempDir('envy-tmpl-default-again-');
      try {
        writeFileSync(join(second.path, 'env.yaml'), readFileSync(join(project, 'env.yaml'), 'utf8'));
        if (isRoot()) execFileSync('chown', ['-R', `${testUser()}:`, second.path]);
        const build = await envy(['build'], { cwd: second.path, env: { ENVY_HOME: debianHome(), CI: 'true' } });
        expect(build.code, build.stderr).toBe(0);
        expect(build.stderr).toMatch(/\(0 built, \d+ cached\)/);
        expect(readFileSync(join(second.path, 'env.lock'), 'utf8')).toBe(readFileSync(join(project, 'env.lock'), 'utf8'));
      } finally {
        second.remove();
      }
    },
  },
];

/** Every template of templates/ must be in exactly one suite: a new template cannot go untested. */
export const LIGHT_TEMPLATES = ['default', 'go', 'python', 'rust'];
export const HEAVY_TEMPLATES = ['c', 'node'];

/** Define the tests for these templates (in this order) in the calling test file. */
export function templateSuite(names: string[]): void {
  const coldUpSeconds: Record<string, number> = {};
  afterAll(() => {
    // The figures the CI budget is planned with: printed, never asserted (timings depend on the machine).
    const total = Object.values(coldUpSeconds).reduce((a, b) => a + b, 0);
    console.log(`cold envy up per template (s): ${Object.entries(coldUpSeconds).map(([t, s]) => `${t} ${s.toFixed(1)}`).join(', ')}; total ${total.toFixed(1)}`);
  });
  test('every template is tested by one of the two suites', () => {
    const shipped = readdirSync(join(envyRoot(), 'templates')).filter((f) => f.endsWith('.yaml')).map((f) => f.slice(0, -'.yaml'.length));
    expect([...LIGHT_TEMPLATES, ...HEAVY_TEMPLATES].sort()).toEqual(shipped.sort());
    expect(cases.map((c) => c.template).sort()).toEqual(shipped.sort());
  });
  for (const name of names) templateCase(cases.find((c) => c.template === name)!, coldUpSeconds);
}

function templateCase(c: TemplateCase, coldUpSeconds: Record<string, number>): void {
  describe(`template ${c.template}`, () => {
    let project: { path: string; remove: () => void } | undefined;
    const run = (args: string[], timeoutMs = 300_000): Promise<RunResult> =>
      envy(args, { cwd: project!.path, env: { ENVY_HOME: debianHome(), CI: 'true' }, timeoutMs });
    /** Fail naming the template, the command and what it said. */
    const ok = (result: RunResult, what: string): RunResult => {
      if (result.code !== 0) throw new Error(`template ${c.template}: ${what} exited ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`);
      return result;
    };

    afterAll(async () => {
      if (!project) return;
      await run(['down', '--rm']);
      project.remove();
    });

    test(`init, up, build and run a ${c.template} program, files owned by the user, down --rm`, async () => {
      project = userTempDir(`envy-tmpl-${c.template}-`);
      const dir = project.path;
      ok(await run(['init', '--template', c.template]), 'envy init');
      for (const [path, content] of Object.entries(c.files)) {
        mkdirSync(dirname(join(dir, path)), { recursive: true });
        writeFileSync(join(dir, path), content);
      }
      if (c.template === 'python') writeWheel(join(dir, 'wheels/greet-0.1-py3-none-any.whl'), 'greet', '0.1', 'def hello():\n    return "hello from python 0.1"\n');
      if (isRoot()) execFileSync('chown', ['-R', `${testUser()}:`, dir]);
      const uid = statSync(dir).uid;

      const started = performance.now();
      const up = ok(await run(['up'], 900_000), 'envy up');
      coldUpSeconds[c.template] = (performance.now() - started) / 1000;
      expect(up.stdout, `template ${c.template}`).toMatch(/ is running \(image [0-9a-f]{12}, \d+ steps? built\)/);
      if (c.upOutput) expect(up.stdout, `template ${c.template}`).toMatch(c.upOutput);
      if (c.upProgress) expect(up.stderr, `template ${c.template}`).toMatch(c.upProgress);
      const lock = readFileSync(join(dir, 'env.lock'), 'utf8');
      expect(lock, `template ${c.template}: env.lock pins the base and every package`).toMatch(/^ {2}digest: "sha256:[0-9a-f]{64}"$/m);
      expect(lock, `template ${c.template}: env.lock pins every package`).not.toMatch(/: null$/m);

      const built = ok(await run(['exec', '--', 'sh', '-c', c.build], 300_000), `envy exec -- sh -c '${c.build}'`);
      expect(built.stdout, `template ${c.template}: ${c.build}`).toMatch(c.output);
      for (const path of c.written) {
        const stat = lstatSync(join(dir, path), { throwIfNoEntry: false });
        expect(stat?.uid, `template ${c.template}: ${path} in the workspace, owned by the host user`).toBe(uid);
      }
      const outputFile = c.written.find((p) => p.startsWith('out-'));
      if (outputFile) expect(readFileSync(join(dir, outputFile), 'utf8')).toBe(`written by ${c.template}\n`);
      await c.more?.(run, dir);

      ok(await run(['down', '--rm']), 'envy down --rm');
      const status = JSON.parse(ok(await run(['status', '--json']), 'envy status').stdout) as { environments: { projectDir: string }[] };
      expect(status.environments.map((e) => e.projectDir), `template ${c.template}: gone after down --rm`).not.toContain(dir);
    }, 1_200_000);
  });
}
