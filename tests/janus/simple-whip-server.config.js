// simple-whip-server's config for the tests and for docs/DEPLOY.md, copied by `make janus`
// into .cache/simple-whip-server/app/config.js (Debian's package points at /etc instead).
// The WHIP API listens on WHIP_HOST:WHIP_PORT (default 127.0.0.1:7080; the copy's `listen`
// call is patched to take the host: the original binds every interface, with no setting);
// JANUS_WS is Janus's WebSocket transport.
module.exports = {
	janus: {
		address: process.env.JANUS_WS || 'ws://127.0.0.1:8188',
	},
	host: process.env.WHIP_HOST || '127.0.0.1',
	port: parseInt(process.env.WHIP_PORT || '7080', 10),
	rest: '/whip',
	allowTrickle: true,
	strictETags: false,
	iceServers: []
};
