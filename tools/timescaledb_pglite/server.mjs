// Test-only database server: PGlite (PostgreSQL 17 in WebAssembly) with the timescaledb extension,
// speaking the PostgreSQL wire protocol on a loopback port, so asyncpg talks to a real TimescaleDB.
//
// PGlite is one database session. Clients are served one at a time, in the order they connect; the
// others wait. The protocol handling is our own rather than @electric-sql/pglite-socket's server,
// which hands PGlite raw TCP chunks: a message split across two chunks (any large COPY or array
// parameter) crashes PGlite, and it never hangs up on a Terminate message. Here incoming bytes are
// cut into whole protocol messages first, and Terminate closes the connection.
//
// COPY ... FROM STDIN: PGlite cannot read COPY data from the protocol, only from a blob it is handed
// with the query. So the server answers CopyInResponse itself, collects the CopyData, and runs the
// same COPY (same table, columns and options, binary included) through PostgreSQL with the data as
// that blob: TimescaleDB's COPY path into the hypertable runs as it would for a socket.
//
// Usage: node server.mjs [data-dir]   (no data dir: in memory). Prints one JSON line
// {"port": N} on stdout once it accepts connections; SIGTERM or SIGINT stops it cleanly.
import net from 'node:net'
import { PGlite } from '@electric-sql/pglite'
import { timescaledb } from '@electric-sql/pglite/timescaledb'

const SSL_REQUEST = 80877103
const TERMINATE = 0x58 // 'X'
const QUERY = 0x51 // 'Q'
const COPY_DATA = 0x64 // 'd'
const COPY_DONE = 0x63 // 'c'
const COPY_FAIL = 0x66 // 'f'
const COPY_FROM_STDIN = /^\s*COPY\s[\s\S]*\sFROM\s+STDIN\b/i
const SYNC = Buffer.from([0x53, 0, 0, 0, 4])

const dataDir = process.argv[2]
const db = await PGlite.create({ ...(dataDir ? { dataDir } : {}), extensions: { timescaledb } })

// Splits a byte stream into whole messages: the startup message has no type byte, the rest do.
class MessageReader {
  constructor() {
    this.buffer = Buffer.alloc(0)
    this.started = false
  }

  push(chunk) {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk
    const messages = []
    for (;;) {
      const header = this.started ? 5 : 4
      if (this.buffer.length < header) break
      const length = this.started ? this.buffer.readInt32BE(1) + 1 : this.buffer.readInt32BE(0)
      if (this.buffer.length < length) break
      messages.push(this.buffer.subarray(0, length))
      this.buffer = this.buffer.subarray(length)
      if (!this.started) {
        // An SSLRequest is followed by the real startup message; anything else is the startup.
        this.started = messages[messages.length - 1].readInt32BE(4) !== SSL_REQUEST
      }
    }
    return messages
  }
}

// The next client gets a clean session: whatever the last one left (an open transaction, prepared
// statements, settings, advisory locks) goes, as it would with a connection of its own. (DISCARD
// ALL resets search_path to pg_catalog in PGlite once timescaledb is loaded, so it is set again.)
async function resetSession() {
  for (const sql of ['ROLLBACK', 'DISCARD ALL', 'SET search_path TO "$user", public']) {
    try {
      await db.exec(sql)
    } catch (error) {
      process.stderr.write(`reset after a client: ${sql}: ${error}\n`)
    }
  }
}

function message(type, body) {
  const header = Buffer.alloc(5)
  header[0] = type.charCodeAt(0)
  header.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([header, body])
}

function errorResponse(error) {
  const field = (code, text) => Buffer.concat([Buffer.from(code), Buffer.from(String(text)), Buffer.from([0])])
  return message('E', Buffer.concat([
    field('S', 'ERROR'), field('V', 'ERROR'), field('C', error.code || 'XX000'),
    field('M', error.message || String(error)), Buffer.from([0]),
  ]))
}

// A COPY FROM STDIN in progress: its statement, rewritten to read the blob, and the data so far.
class CopyIn {
  constructor(sql) {
    this.sql = sql.replace(/\sFROM\s+STDIN\b/i, " FROM '/dev/blob'")
    this.chunks = []
  }

  // CommandComplete or ErrorResponse, then ReadyForQuery with PostgreSQL's own transaction status.
  async finish(failure) {
    let reply
    if (failure) {
      reply = errorResponse({ code: '57014', message: `COPY from stdin failed: ${failure}` })
    } else {
      try {
        const result = await db.query(this.sql, [], { blob: new Blob(this.chunks) })
        reply = message('C', Buffer.from(`COPY ${result.affectedRows ?? 0}\0`))
      } catch (error) {
        reply = errorResponse(error)
      }
    }
    const ready = Buffer.from(await db.execProtocolRaw(new Uint8Array(SYNC)))
    return Buffer.concat([reply, ready])
  }
}

// Serves one client until it terminates or disconnects; resolves then.
function serve(socket) {
  return new Promise((resolve) => {
    const reader = new MessageReader()
    let copy = null
    let work = Promise.resolve()
    let done = false
    const finish = () => {
      if (done) return
      done = true
      work.finally(async () => {
        socket.destroy()
        await resetSession()
        resolve()
      })
    }
    socket.on('data', (chunk) => {
      for (const message of reader.push(chunk)) {
        work = work.then(async () => {
          if (done || socket.destroyed) return
          if (message.length === 8 && message.readInt32BE(4) === SSL_REQUEST) {
            socket.write('N') // no TLS on a loopback test server
            return
          }
          if (reader.started && message[0] === TERMINATE && message.length === 5) {
            finish()
            return
          }
          let reply
          if (copy) {
            if (message[0] === COPY_DATA) {
              copy.chunks.push(message.subarray(5))
              return
            }
            const failure = message[0] === COPY_FAIL ? message.subarray(5, -1).toString() : null
            if (message[0] !== COPY_DONE && !failure) return // Flush or Sync during COPY: nothing to say
            reply = await copy.finish(failure)
            copy = null
          } else if (message[0] === QUERY && COPY_FROM_STDIN.test(message.subarray(5, -1).toString())) {
            copy = new CopyIn(message.subarray(5, -1).toString())
            reply = Buffer.from([0x47, 0, 0, 0, 7, 1, 0, 0]) // CopyInResponse: binary, no column formats
          } else {
            reply = await db.execProtocolRaw(new Uint8Array(message))
          }
          if (reply.length && !socket.destroyed) socket.write(Buffer.from(reply))
        })
      }
    })
    socket.on('close', finish)
    socket.on('error', finish)
  })
}

// One client at a time: the next waits (paused) until the current one has gone.
let queue = Promise.resolve()
const server = net.createServer((socket) => {
  socket.pause()
  queue = queue.then(() => {
    if (socket.destroyed) return
    const served = serve(socket)
    socket.resume()
    return served
  })
})
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n')

let stopping = false
async function stop() {
  if (stopping) return
  stopping = true
  server.close()
  await db.close()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
