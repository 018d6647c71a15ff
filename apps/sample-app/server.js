const { app } = require('./app');

const port = Number(process.env.PORT) || 8080;
const server = app.listen(port, () => {
  console.log(`sample-app listening on port ${port}`);
});

// Stop promptly on `docker stop` / pod deletion (node as PID 1 ignores SIGTERM unless
// handled); idle keep-alive connections would otherwise hold `close` open.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
  });
}
