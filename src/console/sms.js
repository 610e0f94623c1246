// Pure helpers of the console: no DOM, no network.

// Words that usually stand right before a verification code.
const KEYWORD = /(?:验证码|校验码|动态码|确认码|code|otp|pin)\D{0,12}?(\d{4,8})(?!\d)/i;
const DIGITS = /(?<!\d)\d{4,8}(?!\d)/;

/**
 * The verification code in an SMS text, as the text around it:
 * `{before, code, after}`, or null when there is none. A run of 4–8 digits
 * after a keyword (验证码, code, …) wins; otherwise the first such run.
 */
export function extractCode(text) {
  if (typeof text !== 'string') return null;
  const k = KEYWORD.exec(text);
  if (k) {
    const start = k.index + k[0].length - k[1].length;
    return split(text, start, k[1].length);
  }
  const d = DIGITS.exec(text);
  return d ? split(text, d.index, d[0].length) : null;
}

function split(text, start, len) {
  return {
    before: text.slice(0, start),
    code: text.slice(start, start + len),
    after: text.slice(start + len),
  };
}

/**
 * Mobiles from free text: one per line, or separated by commas or
 * semicolons (spaces and dashes inside a number are the server's to
 * normalise).
 */
export function parseMobiles(text) {
  return String(text)
    .split(/[\n\r,，;；]+/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
}

/**
 * Template parameters from `name=value` lines; null when a line has no `=`
 * or an empty name.
 */
export function parseParams(text) {
  const out = {};
  for (const raw of String(text).split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) return null;
    out[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
  }
  return out;
}

/** Unix seconds as a local date and time. */
export function formatTime(secs, locale) {
  const n = Number(secs);
  if (!Number.isFinite(n) || n <= 0) return '–';
  return new Date(n * 1000).toLocaleString(locale);
}

/** The value of HTTP Basic credentials (UTF-8, base64). */
export function basicAuth(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return `Basic ${btoa(bin)}`;
}
