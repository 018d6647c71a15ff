const request = require('supertest');
const { app, escapeHtml } = require('../app');

describe('sample app', () => {
  test('GET / says hello', async () => {
    const res = await request(app).get('/');
    expect(res.status).toBe(200);
    expect(res.text).toBe('Hello, World!');
  });

  test('GET /name/:name greets by name', async () => {
    const res = await request(app).get('/name/Alice');
    expect(res.status).toBe(200);
    expect(res.text).toContain('Hello, Alice!');
  });

  test('GET /name/:name escapes HTML (no XSS)', async () => {
    const res = await request(app).get('/name/' + encodeURIComponent('<script>alert(1)</script>'));
    expect(res.status).toBe(200);
    expect(res.text).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(res.text).not.toContain('<script>');
  });

  test('GET /add/:a/:b adds two numbers', async () => {
    const res = await request(app).get('/add/2/3');
    expect(res.status).toBe(200);
    expect(res.text).toBe('2 + 3 = 5');
  });

  test('GET /add/:a/:b handles negatives and decimals', async () => {
    const res = await request(app).get('/add/-1.5/2');
    expect(res.status).toBe(200);
    expect(res.text).toBe('-1.5 + 2 = 0.5');
  });

  test('GET /add/:a/:b rejects non-numbers with 400', async () => {
    const res = await request(app).get('/add/abc/def');
    expect(res.status).toBe(400);
    expect(res.text).toBe('Invalid numbers');
  });

  test('escapeHtml escapes quotes and ampersands', () => {
    expect(escapeHtml(`"a" & 'b'`)).toBe('&quot;a&quot; &amp; &#39;b&#39;');
  });
});
