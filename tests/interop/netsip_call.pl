#!/usr/bin/perl
# Floorcast interoperability: a basic call between two Perl Net::SIP user agents (Debian
# package libnet-sip-perl) through the node, with RTP through the node's relay. Run by
# tests/interop.rs (interop_netsip_call_rtp_byte_exact):
#
#   perl tests/interop/netsip_call.pl --node 127.0.0.1:<node port> --password demo \
#        --caller 1003 --caller-local 127.0.0.1:<port> \
#        --callee 1004 --callee-local 127.0.0.1:<port> \
#        --send <PCMU file> --received <file> --reply <PCMU file> --reply-received <file>
#
# Both user agents run in this one process on one event loop, each with its own SIP socket
# (leg): the node takes a terminal's INVITE only from the address it registered from, and
# sends the callee's INVITE to that address.
#
# 1. Both register with digest authentication (password --password).
# 2. The caller INVITEs the callee (an offer at its RTP socket); the callee answers 200 with
#    its own SDP; the node relays the media (the SDP either side sees names the node).
# 3. Media: the caller sends --send as PCMU RTP (160-byte payloads every 20 ms), the callee
#    sends --reply back; each writes the payloads it receives, in order, to --received
#    (callee) and --reply-received (caller). The test compares the files byte for byte.
# 4. Once the caller has sent its whole file it lets the last packets arrive, hangs up (BYE,
#    200), and the callee sees the BYE.
#
# Prints one line per step and a final "RESULT: PASS ..." or "RESULT: FAIL ..." line; exits 0
# on success, 1 on a failed step, 2 on bad usage or a missing module. Every wait is bounded
# (--timeout seconds per step, and an alarm on the whole run).
use strict;
use warnings;

use Getopt::Long;

my %option = (timeout => 10, expires => 300, drain => 1);
GetOptions(\%option, 'node=s', 'password=s', 'caller=s', 'caller-local=s', 'callee=s',
    'callee-local=s', 'send=s', 'received=s', 'reply=s', 'reply-received=s', 'timeout=i',
    'drain=f', 'debug')
    && (grep { defined $option{$_} } qw(node password caller caller-local callee callee-local
        send received reply reply-received)) == 10
    or usage();

if (!eval { require Net::SIP; Net::SIP->import(qw(:all)); 1 }) {
    print "RESULT: FAIL Net::SIP is not installed (apt-get install libnet-sip-perl): $@";
    exit 2;
}
Net::SIP::Debug->level(100) if $option{debug};

my $node = $option{node};
my ($caller, $callee) = @option{qw(caller callee)};
for my $file (@option{qw(send reply)}) {
    my $size = -s $file;
    defined $size && $size > 0 && $size % 160 == 0
        or usage("$file must be raw PCMU in whole 160-byte frames");
}
# Sending takes 20 ms per packet; allow three times that under load, plus the steps.
my $send_time = (-s $option{send}) / 160 * 0.02;
$SIG{ALRM} = sub { fail("the whole run took longer than its time limit") };
alarm(int($send_time * 3) + $option{timeout} * 6 + 10);

# One event loop for both user agents, so that one loop call serves both.
my $loop = Net::SIP::Dispatcher::Eventloop->new;
my %ua;
for ([$caller, $option{'caller-local'}], [$callee, $option{'callee-local'}]) {
    my ($user, $local) = @$_;
    my $leg = Net::SIP::Leg->new(addr => $local, proto => 'udp')
        or fail("cannot bind $local: $!");
    $ua{$user} = Net::SIP::Simple->new(
        loop      => $loop,
        leg       => $leg,
        registrar => $node,
        from      => "sip:$user\@$node",
        contact   => "sip:$user\@$local",
        auth      => [$user, $option{password}],
    );
}

# 1. Register both (the callee first: its binding is where the node sends the INVITE).
for my $user ($callee, $caller) {
    my ($state, $granted);
    $ua{$user}->register(
        expires  => $option{expires},
        cb_final => sub {
            my ($status, %info) = @_;
            $granted = $info{expires} if $status eq 'OK';
            $state = $status;
        },
    );
    $loop->loop($option{timeout}, \$state);
    defined $state && $state eq 'OK'
        or fail("REGISTER $user: " . ($ua{$user}->error // 'no final response'));
    print "registered $user for ", $granted // '?', " s\n";
}

# 2. The callee answers any INVITE: records who calls and what was offered, then sends its
#    reply file once (no BYE when done: the caller hangs up) and records what it receives.
my (%incoming, $callee_established, $callee_bye);
$ua{$callee}->listen(
    cb_create => sub {
        my ($call, $request, $leg, $from) = @_;
        $incoming{from} = scalar $request->get_header('from');
        $incoming{uri} = $request->uri;
        $incoming{source} = ref $from ? "$from->{addr}:$from->{port}" : $from;
        $incoming{offer} = media_of($request);
        return 1;
    },
    cb_established => \$callee_established,
    init_media     => $ua{$callee}->rtp('send_recv', $option{reply}, 1, $option{received}),
    cb_rtp_done    => sub { print "callee: reply sent\n" },
    recv_bye       => \$callee_bye,
);

my (@provisional, $final, %final_info, $caller_sent_all, $caller_bye);
my $call = $ua{$caller}->invite(
    "sip:$callee\@$node",
    init_media     => $ua{$caller}->rtp('send_recv', $option{send}, 1, $option{'reply-received'}),
    cb_preliminary => sub { my ($call, $code) = @_; push @provisional, $code },
    cb_final       => sub { my ($status, $call, %info) = @_; %final_info = %info; $final = $status },
    # Do not hang up at once when the file is sent (Net::SIP's default): see step 4.
    cb_rtp_done    => \$caller_sent_all,
    recv_bye       => \$caller_bye,
);
$loop->loop($option{timeout}, \$final);
defined $final or fail("INVITE $callee: no final response within $option{timeout} s");
$final eq 'OK'
    or fail("INVITE $callee: $final (status " . ($final_info{code} // 'none') . ', '
        . ($call->error // 'no error') . ')');
my $answer = media_of($final_info{packet});
print "call answered: provisional responses [@provisional], answer media $answer\n";
defined $incoming{from} or fail("the 200 came but the callee never saw the INVITE");
print "callee got INVITE $incoming{uri} from $incoming{from} via $incoming{source},"
    . " offer media $incoming{offer}\n";
$incoming{from} =~ /sip:\Q$caller\E\@/ or fail("the callee's INVITE is not From $caller");
$incoming{uri} =~ /^sip:\Q$callee\E\@/ or fail("the callee's INVITE is not to $callee");
# The node anchors media: neither side sees the other's RTP address.
my $caller_media = local_media($call);
my $offer_port = (split /:/, $incoming{offer})[-1];
$offer_port != (split /:/, $caller_media)[-1]
    or fail("the callee was offered the caller's own RTP address $caller_media");

$loop->loop($option{timeout}, \$callee_established);
$callee_established or fail("the callee never got the ACK");
print "callee got the ACK\n";

# 3. Media runs. Wait until the caller has sent its whole file.
$loop->loop($send_time * 3 + $option{timeout}, \$caller_sent_all, \$caller_bye, \$callee_bye);
$caller_bye and fail("the caller got a BYE while sending");
$callee_bye and fail("the callee got a BYE while the caller was sending");
$caller_sent_all or fail("the caller did not finish sending within its time limit");
print "caller: file sent\n";
# Let the last packets through the relay (and the callee's reply finish).
$loop->loop($option{drain});

# 4. The caller hangs up.
my $bye_done;
$call->bye(cb_final => \$bye_done);
$loop->loop($option{timeout}, \$bye_done, \$callee_bye);
$loop->loop($option{timeout}, \$callee_bye) if !$callee_bye;
$callee_bye or fail("the callee never got the BYE");
$loop->loop($option{timeout}, \$bye_done) if !$bye_done;
$bye_done or fail("BYE: no final response");
print "hung up\n";

alarm(0);
print "RESULT: PASS Net::SIP $Net::SIP::VERSION: $caller called $callee through $node\n";
exit 0;

# "ip:port" of the audio in a packet's SDP body.
sub media_of {
    my ($packet) = @_;
    my $sdp = $packet && eval { $packet->sdp_body } or return 'none';
    my ($media) = $sdp->get_media or return 'none';
    return "$media->{addr}:$media->{port}";
}

# "ip:port" of the caller's own RTP socket (as offered in its SDP).
sub local_media {
    my ($call) = @_;
    my $sdp = $call->get_param('sdp') or return 'none';
    my ($media) = $sdp->get_media or return 'none';
    return "$media->{addr}:$media->{port}";
}

sub fail {
    my ($message) = @_;
    print "RESULT: FAIL $message\n";
    exit 1;
}

sub usage {
    my ($message) = @_;
    print STDERR "$message\n" if $message;
    print STDERR "usage: $0 --node HOST:PORT --password PASSWORD --caller USER --caller-local"
        . " HOST:PORT --callee USER --callee-local HOST:PORT --send FILE --received FILE"
        . " --reply FILE --reply-received FILE [--timeout SECONDS] [--drain SECONDS] [--debug]\n";
    exit 2;
}
