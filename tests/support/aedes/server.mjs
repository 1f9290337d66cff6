// A second, independent MQTT 3.1.1 broker for the tests: aedes on a loopback port, its
// sessions, subscriptions and retained messages kept in LevelDB under a directory, so a
// restart keeps them (as mosquitto's persistence does).
// Usage: node aedes_server.mjs PORT DATA_DIR   (NODE_PATH: where aedes is installed)
import net from 'node:net'
import { createRequire } from 'node:module'
import path from 'node:path'

const [port, dir] = process.argv.slice(2)
const need = createRequire(path.join(process.env.EDGEKIT_AEDES_MODULES, 'x.js'))
const { Aedes } = await import(need.resolve('aedes'))
const { Level } = need('level')
const persistenceLevel = need('aedes-persistence-level')

const db = new Level(dir)
const broker = await Aedes.createBroker({ persistence: persistenceLevel(db) })
const server = net.createServer(broker.handle)
server.listen(Number(port), '127.0.0.1', () => console.log(`aedes listening on 127.0.0.1:${port}`))
broker.on('clientError', (client, err) => console.error('client error', client && client.id, err.message))

function stop () {
  server.close()
  broker.close(() => db.close().then(() => process.exit(0), () => process.exit(0)))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
