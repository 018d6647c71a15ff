// The TD4 sample app. Routes:
//   GET /              -> "Hello, World!"
//   GET /name/:name    -> greeting rendered from views/hello.html, the name HTML-escaped
//   GET /add/:a/:b     -> "a + b = sum", or 400 "Invalid numbers"
const fs = require('fs');
const path = require('path');
const express = require('express');

// Read at start-up: an image that forgot to copy views/ fails at once, not on the first request.
const helloTemplate = fs.readFileSync(path.join(__dirname, 'views', 'hello.html'), 'utf8');

function escapeHtml(text) {
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

function parseNumber(text) {
  return /^-?\d+(\.\d+)?$/.test(text) ? Number(text) : NaN;
}

const app = express();

app.get('/', (req, res) => {
  res.type('text/plain').send('Hello, World!');
});

app.get('/name/:name', (req, res) => {
  res.type('html').send(helloTemplate.replace('{{name}}', escapeHtml(req.params.name)));
});

app.get('/add/:a/:b', (req, res) => {
  const a = parseNumber(req.params.a);
  const b = parseNumber(req.params.b);
  if (Number.isNaN(a) || Number.isNaN(b)) {
    res.status(400).type('text/plain').send('Invalid numbers');
    return;
  }
  res.type('text/plain').send(`${a} + ${b} = ${a + b}`);
});

module.exports = { app, escapeHtml };
