// Command agent is the e2e test agent that runs inside the QEMU guest (started
// by the initramfs's /init). It answers JSON lines (guestproto) on a serial
// port. Its update_interface, list_interfaces, update_routes and list_routes
// follow Kata 4.1's agent (src/agent/src/rpc.rs and netlink.rs at
// 7c6ba40c54) request by request on the guest's kernel: the PCI wait and the
// MAC reconciliation at DevicePath, the by-MAC first match and 4.1's by-name
// fallback, the down/addresses/rename/up order with its "_temp" swap, routes
// added with NLM_F_REPLACE and never deleted, and the lists' quirks.
// docs/kata-model.md is the rule table. inspect_links and inspect_routes
// (not Kata's) show tests the kernel's state.
//
// Build it static: CGO_ENABLED=0 go build ./e2e/internal/guest/agent
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kata-netmon/kata-netmon/e2e/internal/guest/guestproto"
)

// defaultHotplugTimeout bounds update_interface's wait for a net device at
// DevicePath when the request gives none: Kata's agent.hotplug_timeout
// (src/agent/src/config.rs DEFAULT_HOTPLUG_TIMEOUT).
const defaultHotplugTimeout = 3 * time.Second

func main() {
	port := flag.String("port", "/dev/ttyS1", "serial port to serve on")
	flag.Parse()
	log.SetPrefix("knm-agent: ")
	log.SetFlags(log.Lmicroseconds)

	f, err := os.OpenFile(*port, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		log.Fatalf("open %s: %v", *port, err)
	}
	if err := setRaw(f); err != nil {
		log.Fatalf("set %s raw: %v", *port, err)
	}
	a := &agent{out: f, servers: map[int]*tokenServer{}}
	log.Printf("serving on %s", *port)
	r := bufio.NewReaderSize(f, 1<<16)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			log.Fatalf("read %s: %v", *port, err)
		}
		var req guestproto.Request
		if json.Unmarshal(line, &req) != nil || req.ID == 0 || req.Cmd == "" {
			continue // noise: a half line from before the port was raw
		}
		go a.handle(&req)
	}
}

// setRaw puts the tty in raw mode (no echo, no line editing, no CR/NL
// translation) and drops whatever arrived before.
func setRaw(f *os.File) error {
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CBAUD | unix.CRTSCTS
	t.Cflag |= unix.CS8 | unix.CLOCAL | unix.CREAD | unix.B115200
	t.Ispeed, t.Ospeed = unix.B115200, unix.B115200
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return err
	}
	return unix.IoctlSetInt(fd, unix.TCFLSH, unix.TCIFLUSH)
}

type agent struct {
	outMu sync.Mutex
	out   *os.File

	// netMu is Kata's agent sandbox lock: update_interface (after its
	// PCI wait), update_routes and the lists hold it.
	netMu   sync.Mutex
	srvMu   sync.Mutex
	servers map[int]*tokenServer
}

func (a *agent) handle(req *guestproto.Request) {
	start := time.Now()
	resp := &guestproto.Response{Re: req.ID}
	var err error
	switch req.Cmd {
	case guestproto.CmdPing:
	case guestproto.CmdUpdateInterface:
		var waited time.Duration
		resp.Interface, waited, resp.Notes, err = a.updateInterface(req.Interface, time.Duration(req.TimeoutMS)*time.Millisecond)
		resp.NICWaitUS = waited.Microseconds()
		for _, n := range resp.Notes {
			log.Printf("update_interface #%d: %s", req.ID, n)
		}
	case guestproto.CmdListInterfaces:
		resp.Interfaces, err = a.listInterfaces()
	case guestproto.CmdUpdateRoutes:
		resp.Routes, err = a.updateRoutes(req.Routes)
	case guestproto.CmdListRoutes:
		resp.Routes, err = a.listRoutes()
	case guestproto.CmdInspectLinks:
		resp.Links, err = inspectLinks()
	case guestproto.CmdInspectRoutes:
		resp.KernelRoutes, err = inspectRoutes()
	case guestproto.CmdServeToken:
		err = a.serveToken(req.Port, req.Token)
	default:
		err = fmt.Errorf("unknown command %q", req.Cmd)
	}
	if err != nil {
		resp.Error = err.Error()
	}
	if req.Cmd != guestproto.CmdPing {
		log.Printf("%s #%d took %v err=%v", req.Cmd, req.ID, time.Since(start).Round(time.Microsecond), err)
	}
	b, merr := json.Marshal(resp)
	if merr != nil {
		b, _ = json.Marshal(&guestproto.Response{Re: req.ID, Error: merr.Error()})
	}
	b = append(b, '\n')
	a.outMu.Lock()
	defer a.outMu.Unlock()
	if _, err := a.out.Write(b); err != nil {
		log.Fatalf("write reply: %v", err)
	}
}

type tokenServer struct {
	ln    net.Listener
	mu    sync.Mutex
	token string
}

func (a *agent) serveToken(port int, token string) error {
	if port <= 0 || port > 65535 {
		return fmt.Errorf("bad port %d", port)
	}
	a.srvMu.Lock()
	defer a.srvMu.Unlock()
	if s := a.servers[port]; s != nil {
		s.mu.Lock()
		s.token = token
		s.mu.Unlock()
		return nil
	}
	ln, err := net.Listen("tcp", ":"+strconv.Itoa(port))
	if err != nil {
		return err
	}
	s := &tokenServer{ln: ln, token: token}
	a.servers[port] = s
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				log.Printf("token server :%d: %v", port, err)
				return
			}
			s.mu.Lock()
			tok := s.token
			s.mu.Unlock()
			log.Printf("token server :%d: connection from %s", port, c.RemoteAddr())
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_, _ = c.Write([]byte(tok + "\n"))
			_ = c.Close()
		}
	}()
	return nil
}
