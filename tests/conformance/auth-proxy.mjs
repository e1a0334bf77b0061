// Forwards every request to the gateway under test unchanged (Host, Origin and all other
// headers as the conformance suite sent them) with a bearer token added: the suite has no
// option for one, and /mcp answers 401 without it.
//
//   node auth-proxy.mjs LISTEN_PORT GATEWAY_PORT TOKEN
import http from 'node:http';

const [listen, upstream, token] = process.argv.slice(2);

http
  .createServer((req, res) => {
    const headers = { ...req.headers, authorization: `Bearer ${token}` };
    const forward = http.request(
      { host: '127.0.0.1', port: Number(upstream), method: req.method, path: req.url, headers },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on('error', (e) => {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`gateway unreachable: ${e.message}\n`);
    });
    req.pipe(forward);
  })
  .listen(Number(listen), '127.0.0.1');
