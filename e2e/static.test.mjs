// Static checks of the dashboard files (no browser, no binaries): they guard the rules the
// browser tests cannot see on every code path — no HTML built from strings, nothing inline
// that a strict CSP would block, no CDN, and every referenced asset present in static/.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const STATIC = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'static');
const read = (f) => fs.readFileSync(path.join(STATIC, f), 'utf8');
const html = read('index.html');
const js = read('app.js');
const css = read('app.css');

test('app.js never builds HTML from strings', () => {
  for (const bad of ['innerHTML', 'outerHTML', 'insertAdjacentHTML', 'document.write', 'eval(', 'new Function', 'setAttribute(\'on', '.onclick']) {
    assert.ok(!js.includes(bad), `app.js uses ${bad}`);
  }
});

test('index.html has no inline script, handler or style', () => {
  const scripts = [...html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/g)];
  assert.ok(scripts.length > 0);
  for (const [, attrs, body] of scripts) {
    assert.match(attrs, /\bsrc="/, 'inline <script> without src');
    assert.equal(body.trim(), '', 'inline script body');
  }
  assert.doesNotMatch(html, /\son[a-z]+\s*=/i, 'inline event handler attribute');
  assert.doesNotMatch(html, /\sstyle\s*=/i, 'inline style attribute');
  assert.doesNotMatch(html, /<style\b/i, 'inline <style> element');
  assert.doesNotMatch(html, /javascript:/i);
});

test('no CDN or other external URL; every asset is relative and present', () => {
  for (const [name, text] of [['index.html', html], ['app.js', js], ['app.css', css]]) {
    assert.doesNotMatch(text, /(src|href)\s*=\s*"(https?:)?\/\//i, `${name} loads something from another origin`);
    assert.doesNotMatch(text, /url\(\s*['"]?(https?:)?\/\//i, `${name} loads something from another origin`);
    assert.doesNotMatch(text, /cdn\.|unpkg|jsdelivr|cdnjs|googleapis/i, `${name} mentions a CDN`);
  }
  const refs = [...html.matchAll(/(?:src|href)="([^"#]+)"/g)].map((m) => m[1]);
  assert.ok(refs.length >= 5, refs.join(', '));
  for (const ref of refs) {
    assert.ok(!ref.startsWith('/'), `${ref} must be relative (the page lives under /admin/ui/)`);
    assert.ok(fs.existsSync(path.join(STATIC, ref)), `${ref} is missing from static/`);
  }
});

test('vendored files are present with licences and versions, without source-map references', () => {
  for (const f of ['vendor/bootstrap/bootstrap.min.css', 'vendor/bootstrap/bootstrap.bundle.min.js', 'vendor/bootstrap/LICENSE',
    'vendor/chartjs/chart.umd.min.js', 'vendor/chartjs/LICENSE.md', 'vendor/VERSIONS.md']) {
    assert.ok(fs.existsSync(path.join(STATIC, f)), `${f} missing: run scripts/vendor-frontend.sh`);
  }
  const versions = read('vendor/VERSIONS.md');
  assert.match(versions, /\| bootstrap \| 5\.3\.\d+ \|/);
  assert.match(versions, /\| chart\.js \| 4\.\d+\.\d+ \|/);
  for (const f of ['vendor/bootstrap/bootstrap.min.css', 'vendor/bootstrap/bootstrap.bundle.min.js', 'vendor/chartjs/chart.umd.min.js']) {
    assert.doesNotMatch(read(f), /sourceMappingURL=/, `${f} points at a source map that is not vendored`);
  }
});

test('every i18n key exists in both languages', () => {
  const block = (lang) => {
    const m = new RegExp(`\\b${lang}: \\{([\\s\\S]*?)\\n    \\}`).exec(js);
    assert.ok(m, `no ${lang} dictionary`);
    return new Set([...m[1].matchAll(/'([a-z0-9_.]+)':/g)].map((x) => x[1]));
  };
  const en = block('en');
  const zh = block('zh');
  assert.deepEqual([...en].filter((k) => !zh.has(k)), [], 'keys missing in zh');
  assert.deepEqual([...zh].filter((k) => !en.has(k)), [], 'keys missing in en');
  const used = new Set([
    ...[...html.matchAll(/data-i18n(?:-placeholder|-aria)?="([^"]+)"/g)].map((m) => m[1]),
    ...[...js.matchAll(/\bt\('([a-z0-9_.]+)'/g)].map((m) => m[1]),
  ]);
  // Dynamic lookups (`t('status.' + st)`) show up as bare prefixes; check their fixed members.
  for (const k of ['status.active', 'status.disabled', 'status.expired', 'f.request_id', 'f.user_agent', 'f.total_tokens']) used.add(k);
  assert.deepEqual([...used].filter((k) => !k.endsWith('.') && !en.has(k)), [], 'keys used but not translated');
});
