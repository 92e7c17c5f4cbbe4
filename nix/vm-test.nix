# NixOS VM test of the module: nix build .#checks.x86_64-linux.vm-test
# The machine makes its own certificates, runs a fake OpenAI-compatible upstream on
# localhost, and drives the service through start, mTLS requests, the control socket,
# the audit journal, reload and stop.
{ pkgs, module }:
let
  upstreamPort = 8081;
  upstreamKey = "sk-fake-upstream-key";
  reply = "hello from the fake upstream";

  # The OpenAI chat completions protocol, just enough of it: JSON or an SSE stream.
  fakeUpstream = pkgs.writeText "fake_openai.py" ''
    import json
    import os
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    KEY = os.environ["FAKE_OPENAI_KEY"]
    REPLY = "${reply}"


    class Handler(BaseHTTPRequestHandler):
        def _send(self, status, body, content_type="application/json"):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self):
            if self.headers.get("Authorization") == "Bearer " + KEY:
                return True
            self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
            return False

        def do_GET(self):
            if not self._authorized():
                return
            if self.path.endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self):
            if not self._authorized():
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": "not found"}})
                return
            usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
            base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body["model"]}
            if not body.get("stream"):
                message = {"role": "assistant", "content": REPLY}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                self._send(200, dict(base, object="chat.completion", choices=[choice], usage=usage))
                return
            chunks = [
                {"index": 0, "delta": {"role": "assistant", "content": REPLY}, "finish_reason": None},
                {"index": 0, "delta": {}, "finish_reason": "stop"},
            ]
            events = [dict(base, object="chat.completion.chunk", choices=[c]) for c in chunks]
            events.append(dict(base, object="chat.completion.chunk", choices=[], usage=usage))
            stream = "".join("data: " + json.dumps(e) + "\n\n" for e in events) + "data: [DONE]\n\n"
            self._send(200, stream.encode(), "text/event-stream")


    ThreadingHTTPServer(("127.0.0.1", int(os.environ["FAKE_OPENAI_PORT"])), Handler).serve_forever()
  '';
in
pkgs.testers.runNixOSTest {
  name = "securellm-bridge";

  nodes.machine =
    { lib, ... }:
    {
      imports = [ module ];

      services.securellm-bridge = {
        enable = true;
        tls = {
          certFile = "/etc/securellm/tls/server.crt";
          keyFile = "/etc/securellm/tls/server.key";
          clientCaFile = "/etc/securellm/tls/ca.crt";
        };
        credentials.fake = "/run/keys/fake-openai";
        settings = {
          log.level = "debug";
          providers.fake = {
            kind = "openai";
            base_url = "http://127.0.0.1:${toString upstreamPort}/v1";
            models = [ "fake-model" ];
            api_key = "cred:fake";
          };
        };
      };
      # Started by the test once its certificates exist.
      systemd.services.securellm-bridge.wantedBy = lib.mkForce [ ];

      systemd.services.fake-openai = {
        wantedBy = [ "multi-user.target" ];
        environment = {
          FAKE_OPENAI_KEY = upstreamKey;
          FAKE_OPENAI_PORT = toString upstreamPort;
        };
        serviceConfig = {
          ExecStart = "${pkgs.python3.interpreter} ${fakeUpstream}";
          DynamicUser = true;
        };
      };

      users.users.alice = {
        isNormalUser = true;
        extraGroups = [ "securellm" ];
      };
      users.users.bob.isNormalUser = true;

      environment.systemPackages = [ pkgs.curl ];
    };

  testScript = ''
    import json

    unit = "securellm-bridge.service"
    tls = "/etc/securellm/tls"

    machine.wait_for_unit("multi-user.target")
    machine.wait_for_unit("fake-openai.service")
    machine.wait_for_open_port(${toString upstreamPort})

    with subtest("certificates and the provider key are made on the machine"):
        machine.succeed(
            f"securellmctl certs init --dir {tls}",
            f"chgrp securellm {tls} {tls}/server.key",
            f"chmod 0750 {tls}",
            f"chmod 0640 {tls}/server.key",
            "install -m 0400 /dev/null /run/keys/fake-openai",
            "printf %s '${upstreamKey}' > /run/keys/fake-openai",
        )

    with subtest("the unit becomes active once systemd got READY=1"):
        machine.succeed(f"systemctl start {unit}")
        assert machine.succeed(f"systemctl show -P Type {unit}").strip() == "notify"
        assert machine.succeed(f"systemctl show -P ActiveState {unit}").strip() == "active"
        status = machine.succeed(f"systemctl show -P StatusText {unit}")
        assert status.startswith("Ready"), status
        machine.wait_for_open_port(8443)

    with subtest("the hardening stays within the documented exposure"):
        machine.succeed(f"systemd-analyze security --threshold=25 --no-pager {unit}")

    with subtest("group securellm may use the control socket, others may not"):
        machine.succeed("su -l alice -c 'securellmctl status'")
        out = machine.fail("su -l bob -c 'securellmctl status' 2>&1")
        assert "permission denied" in out, out

    with subtest("an mTLS request reaches the provider"):
        key = json.loads(machine.succeed("securellmctl --json keys create --owner vm-test"))["key"]
        body = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})
        request = (
            f"curl --silent --show-error --fail-with-body --cacert {tls}/ca.crt "
            f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
            f"-d '{body}' https://localhost:8443/v1/chat/completions"
        )
        answer = json.loads(machine.succeed(f"{request} --cert {tls}/client.crt --key {tls}/client.key"))
        assert answer["choices"][0]["message"]["content"] == "${reply}", answer
        # Without a client certificate the TLS handshake is refused.
        machine.fail(request)

    with subtest("the request's audit record is in the journal"):
        machine.wait_until_succeeds("journalctl -q -t securellm-bridge -o json | grep -q fake-model")

    with subtest("systemctl reload re-reads the configuration in the same process"):
        pid = machine.succeed(f"systemctl show -P MainPID {unit}").strip()
        machine.succeed(f"systemctl reload {unit}")
        machine.wait_until_succeeds("journalctl -q -t securellm-bridged | grep -q 'configuration reloaded'")
        assert machine.succeed(f"systemctl show -P ActiveState {unit}").strip() == "active"
        assert machine.succeed(f"systemctl show -P MainPID {unit}").strip() == pid

    with subtest("systemctl stop drains and exits cleanly"):
        machine.succeed(f"systemctl stop {unit}")
        machine.succeed(f"journalctl -q -u {unit} | grep -q 'Deactivated successfully'")
        machine.succeed("journalctl -q -t securellm-bridged | grep -q 'stopped$'")
  '';
}
