// Node-Media-Server (npm) as a third-party RTMP/RTMPS server for the tests: plain RTMP on the
// first port (a publisher feeds it), RTMPS on the second with the given key and certificate.
// Usage: node nms_rtmps.mjs <rtmp port> <rtmps port> <key.pem> <cert.pem> <node_modules dir>
import { createRequire } from "node:module";
import path from "node:path";

const [rtmp, rtmps, key, cert, modules] = process.argv.slice(2);
const require = createRequire(path.join(modules, "noop.js"));
const NodeMediaServer = require("node-media-server");
new NodeMediaServer({
  bind: "127.0.0.1",
  rtmp: { port: Number(rtmp) },
  rtmps: { port: Number(rtmps), key, cert },
}).run();
