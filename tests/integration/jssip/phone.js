// The browser phone of tests/integration/test_jssip_live.py: real JsSIP in a
// real Chromium, with a small API the test drives over the DevTools protocol.
//
//   await phone.start('alice', {uri, ws, user, password})  -> 'registered' or the failure cause
//   phone.call('alice', 'sip:bob@example.test')             -> starts an outgoing call
//   phone.answer('alice')                                   -> answers the ringing incoming call
//   phone.hangup('alice')                                   -> ends the call (CANCEL, BYE or rejection)
//   phone.state('alice')                                    -> {registered, call, events, ice, candidates}
//   phone.stop('alice')                                     -> unregisters and closes the WebSocket
//
// Media is Chromium's fake microphone (--use-fake-device-for-media-stream).
// ICE never leaves the machine: no STUN or TURN server, and every SDP, ours
// and the peer's, keeps only candidates on 127.0.0.1 (Chromium offers them
// with --allow-loopback-in-peer-connection); `candidates` lists the
// addresses of those we sent.

const JsSIP = require('jssip');

const phones = {};

function loopbackOnly(sdp) {
  return sdp
    .split('\r\n')
    .filter((line) => !line.startsWith('a=candidate:') || line.split(' ')[4] === '127.0.0.1')
    .join('\r\n');
}

function candidateAddresses(sdp) {
  return sdp
    .split('\r\n')
    .filter((line) => line.startsWith('a=candidate:'))
    .map((line) => line.split(' ')[4]);
}

function record(p, type, detail = {}) {
  p.events.push({ type, ...detail });
}

function watch(p, session) {
  p.session = session;
  p.call = { direction: session.direction, status: 'progress' };
  record(p, `call:new:${session.direction}`, { remote: session.remote_identity.uri.toString() });
  session.on('sdp', (e) => {
    e.sdp = loopbackOnly(e.sdp);
    if (e.originator === 'local') {
      p.candidates.push(...candidateAddresses(e.sdp));
    }
  });
  const follow = (pc) =>
    pc.addEventListener('iceconnectionstatechange', () => {
      p.ice = pc.iceConnectionState;
    });
  if (session.connection) {
    follow(session.connection); // an outgoing call's, made before 'newRTCSession'
  } else {
    session.on('peerconnection', (e) => follow(e.peerconnection));
  }
  session.on('progress', () => record(p, 'call:progress'));
  session.on('accepted', () => record(p, 'call:accepted'));
  session.on('confirmed', () => {
    p.call.status = 'confirmed';
    record(p, 'call:confirmed');
  });
  session.on('ended', (e) => {
    p.call.status = 'ended';
    record(p, 'call:ended', { originator: e.originator, cause: e.cause });
  });
  session.on('failed', (e) => {
    p.call.status = 'failed';
    record(p, 'call:failed', { originator: e.originator, cause: e.cause });
  });
}

const media = { mediaConstraints: { audio: true, video: false }, pcConfig: { iceServers: [] } };

window.phone = {
  start(name, { uri, ws, user, password }) {
    const p = { events: [], registered: false, session: null, call: null, ice: null, candidates: [] };
    phones[name] = p;
    const socket = new JsSIP.WebSocketInterface(ws);
    const config = { sockets: [socket], uri, register: true };
    if (user) {
      config.authorization_user = user;
      config.password = password;
    }
    p.ua = new JsSIP.UA(config);
    p.ua.on('newRTCSession', (e) => watch(p, e.session));
    return new Promise((resolve) => {
      p.ua.on('registered', () => {
        p.registered = true;
        record(p, 'registered');
        resolve('registered');
      });
      p.ua.on('unregistered', () => {
        p.registered = false;
        record(p, 'unregistered');
      });
      p.ua.on('registrationFailed', (e) => {
        record(p, 'registrationFailed', { cause: e.cause });
        resolve(e.cause);
      });
      p.ua.start();
    });
  },
  call(name, target) {
    phones[name].ua.call(target, media);
    return true;
  },
  answer(name) {
    phones[name].session.answer(media);
    return true;
  },
  hangup(name) {
    phones[name].session.terminate();
    return true;
  },
  state(name) {
    const p = phones[name];
    return { registered: p.registered, call: p.call, events: p.events, ice: p.ice, candidates: p.candidates };
  },
  stop(name) {
    phones[name].ua.stop();
    return true;
  },
  version: JsSIP.version,
};
