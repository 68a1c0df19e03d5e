/**
 * templates/ c and node on real projects (see template-cases.ts): their apt installs are the largest
 * (gdb, valgrind, cmake; npm's ~400 packages), so they have a file of their own in CI's figures.
 */
import { HEAVY_TEMPLATES, templateSuite } from './template-cases.js';

templateSuite(HEAVY_TEMPLATES);
