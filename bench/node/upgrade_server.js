// Node baseline of asgi-hijack's benchmarks (node's stdlib `http` only).
//
// Usage: node upgrade_server.js PORT
// `server.on('upgrade')` answers "Upgrade: tcp" with 101, then speaks the stream protocol of
// bench/apps.py, one command per line until EOF: "echo" (echo until EOF), "sink N" (read N
// bytes, answer "ok\n"), "source N" (write N bytes). Other requests get "Hello, world!".
'use strict';

const http = require('http');

const SOURCE = Buffer.alloc(256 * 1024);

function source(socket, left, done) {
  while (left > 0) {
    const chunk = left >= SOURCE.length ? SOURCE : SOURCE.subarray(0, left);
    left -= chunk.length;
    if (!socket.write(chunk)) {
      socket.once('drain', () => source(socket, left, done));
      return;
    }
  }
  done();
}

function serveStream(socket, head) {
  let pending = Buffer.alloc(0);
  let mode = 'command';
  let left = 0;

  function feed(data) {
    while (data.length > 0) {
      if (mode === 'echo') {
        if (!socket.write(data)) {
          socket.pause();
          socket.once('drain', () => socket.resume());
        }
        return;
      }
      if (mode === 'sink') {
        const n = Math.min(left, data.length);
        left -= n;
        data = data.subarray(n);
        if (left === 0) {
          socket.write('ok\n');
          mode = 'command';
        }
        continue;
      }
      pending = pending.length ? Buffer.concat([pending, data]) : data;
      const eol = pending.indexOf(10);
      if (eol < 0) return;
      const [command, arg] = pending.subarray(0, eol).toString('latin1').trim().split(' ');
      data = pending.subarray(eol + 1);
      pending = Buffer.alloc(0);
      if (command === 'echo') {
        mode = 'echo';
      } else if (command === 'sink') {
        mode = 'sink';
        left = Number(arg);
      } else if (command === 'source') {
        socket.pause();
        source(socket, Number(arg), () => {
          socket.resume();
          feed(data);
        });
        return;
      } else {
        socket.destroy();
        return;
      }
    }
  }

  socket.on('data', feed);
  socket.on('end', () => socket.end());
  socket.on('error', () => socket.destroy());
  feed(head);
}

const server = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/plain');
  res.end('Hello, world!');
});

server.on('upgrade', (req, socket, head) => {
  if ((req.headers.upgrade || '').toLowerCase() !== 'tcp') {
    socket.destroy();
    return;
  }
  socket.setNoDelay(true);
  socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n');
  serveStream(socket, head);
});

server.listen(Number(process.argv[2]), '127.0.0.1');
