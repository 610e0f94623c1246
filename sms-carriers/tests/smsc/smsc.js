// An SMSC for sms-carriers' SMPP test, on the npm package `smpp` (an
// implementation independent of the Rust client). It listens on
// 127.0.0.1 (port from argv[2], 0 = any), prints `LISTENING <port>`, then:
// - accepts bind_transceiver for system_id "sys" / password "pw" only;
// - answers submit_sm with a fresh message id, then sends a deliver_sm
//   receipt for that id: `stat:DELIVRD` unless the destination ends in 1,
//   then `stat:UNDELIV err:034`;
// - reassembles concatenated parts (UDH IEI 0) and prints
//   `MESSAGE <destination> <data_coding> <JSON text>` for each message;
// - answers enquire_link (printing `ENQUIRE_LINK`) and unbind; prints
//   `BOUND` for each successful bind.
'use strict';
const smpp = require('smpp');

let nextId = 1000;
const partial = new Map();

const server = smpp.createServer({ debug: false }, (session) => {
  session.on('error', () => {});
  session.on('bind_transceiver', (pdu) => {
    if (pdu.system_id !== 'sys' || pdu.password !== 'pw') {
      session.send(pdu.response({ command_status: smpp.ESME_RBINDFAIL }));
      session.close();
      return;
    }
    session.send(pdu.response());
    console.log('BOUND');
  });
  session.on('enquire_link', (pdu) => {
    session.send(pdu.response());
    console.log('ENQUIRE_LINK');
  });
  session.on('unbind', (pdu) => {
    session.send(pdu.response());
    session.close();
  });
  session.on('submit_sm', (pdu) => {
    const id = String(nextId++);
    session.send(pdu.response({ message_id: id }));
    const sm = pdu.short_message || {};
    let text = typeof sm === 'string' ? sm : String(sm.message || '');
    let concat = null;
    for (const ie of sm.udh || []) {
      if (ie[0] === 0x00 && ie[1] === 0x03) concat = { ref: ie[2], total: ie[3], seq: ie[4] };
    }
    const dest = pdu.destination_addr;
    if (concat) {
      const key = dest + '/' + concat.ref;
      const parts = partial.get(key) || [];
      parts[concat.seq - 1] = text;
      partial.set(key, parts);
      if (parts.filter((p) => p !== undefined).length === concat.total) {
        partial.delete(key);
        console.log('MESSAGE ' + dest + ' ' + pdu.data_coding + ' ' + JSON.stringify(parts.join('')));
      }
    } else {
      console.log('MESSAGE ' + dest + ' ' + pdu.data_coding + ' ' + JSON.stringify(text));
    }
    const ok = !dest.endsWith('1');
    const stat = ok ? 'DELIVRD' : 'UNDELIV';
    const err = ok ? '000' : '034';
    setImmediate(() => {
      session.deliver_sm({
        source_addr: dest,
        destination_addr: pdu.source_addr,
        esm_class: 0x04,
        short_message: 'id:' + id + ' sub:001 dlvrd:' + (ok ? '001' : '000') +
          ' submit date:2412050101 done date:2412050102 stat:' + stat + ' err:' + err + ' text:',
      });
    });
  });
});

server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  console.log('LISTENING ' + server.address().port);
});
