/** templates/ default, go, python and rust on real projects: see template-cases.ts. */
import { LIGHT_TEMPLATES, templateSuite } from './template-cases.js';

templateSuite(LIGHT_TEMPLATES);
