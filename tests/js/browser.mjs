// Headless Chromium for the page tests (playwright-core from the peers' node_modules), and a
// guard that keeps a page on loopback: every request for another host is aborted and listed.
import { createRequire } from 'node:module';
import path from 'node:path';

export async function launch(modules) {
  const require = createRequire(path.join(modules, 'package.json'));
  const { chromium } = require('playwright-core');
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: 30000,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-component-update', '--disable-sync', '--no-first-run',
           '--autoplay-policy=no-user-gesture-required'],
  });
}

const LOCAL = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

// Aborts `page`'s requests to any host but loopback, listing them in `external`; console
// errors go to stderr (or to `errors`, when given).
export async function loopbackOnly(page, external, errors) {
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (errors) errors.push(m.text()); else console.error('console:', m.text());
  });
  await page.route('**/*', (route) => {
    const u = route.request().url();
    let host = null;
    try { host = new URL(u).hostname; } catch (e) { /* not a URL with a host */ }
    if (host !== null && host !== '' && !LOCAL.has(host)) {
      external.push(u);
      return route.abort('blockedbyclient');
    }
    return route.continue();
  });
}
