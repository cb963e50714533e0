#!/usr/bin/perl
# Floorcast interoperability: Perl's Net::SIP (Debian package libnet-sip-perl), an SIP stack
# unrelated to Floorcast's and to SIPp's, registers a user with digest authentication over UDP,
# sends OPTIONS, and deregisters. Run by tests/interop.rs (interop_netsip_register):
#
#   perl tests/interop/netsip_register.pl --registrar 127.0.0.1:<node port> \
#        --local 127.0.0.1:<client port> --user 1002 --password demo
#
# The node's 401 carries two WWW-Authenticate headers (SHA-256 first, then MD5); Net::SIP knows
# only MD5 and must skip the SHA-256 challenge and answer the MD5 one.
#
# Prints one line per step and a final "RESULT: PASS ..." or "RESULT: FAIL ..." line; exits 0
# on success, 1 on a failed step, 2 on bad usage or a missing module. Every step is bounded in
# time (--timeout seconds, default 10), and the whole run by an alarm.
use strict;
use warnings;

use Getopt::Long;

my %option = (timeout => 10, expires => 300);
GetOptions(\%option, 'registrar=s', 'local=s', 'user=s', 'password=s', 'timeout=i', 'expires=i', 'debug')
    && $option{registrar} && $option{local} && $option{user} && defined $option{password}
    or usage();

if (!eval { require Net::SIP; Net::SIP->import(qw(:all)); 1 }) {
    print "RESULT: FAIL Net::SIP is not installed (apt-get install libnet-sip-perl): $@";
    exit 2;
}
Net::SIP::Debug->level(100) if $option{debug};

# Hard bound on the whole run: 4 steps, each bounded below, plus slack.
$SIG{ALRM} = sub { fail("no answer within the overall time limit") };
alarm($option{timeout} * 4 + 5);

my ($user, $registrar) = @option{qw(user registrar)};
my $from = "sip:$user\@$registrar";
my $contact = "sip:$user\@$option{local}";

my $leg = Net::SIP::Leg->new(addr => $option{local}, proto => 'udp')
    or fail("cannot bind $option{local}: $!");
my $ua = Net::SIP::Simple->new(
    leg       => $leg,
    registrar => $registrar,
    from      => $from,
    contact   => $contact,
    auth      => [$user, $option{password}],
);

# 1. REGISTER: 401 (SHA-256 and MD5 challenges), answered with MD5 digest, then 200.
my $granted = register($option{expires});
defined $granted or fail("REGISTER $user: " . ($ua->error // 'no final response'));
$granted == $option{expires}
    or fail("REGISTER $user: granted $granted s, asked for $option{expires} s");
print "registered $user for $granted s\n";

# 2. OPTIONS to the node: 200 with an Allow header naming REGISTER.
my ($code, $packet) = request(
    'OPTIONS',
    { from => $from, to => "sip:$registrar", contact => $contact },
    uri => "sip:$registrar",
);
defined $code or fail("OPTIONS: no final response");
$code == 200 or fail("OPTIONS: status $code");
# Net::SIP splits comma-separated header values; a scalar-context get_header dies on several.
my $allow = join(', ', $packet->get_header('allow'));
$allow =~ /\bREGISTER\b/ or fail("OPTIONS: 200 without REGISTER in Allow ('$allow')");
print "OPTIONS answered 200, Allow: $allow\n";

# 3. REGISTER again (refresh within the same registration): still 200.
$granted = register($option{expires});
defined $granted or fail("re-REGISTER $user: " . ($ua->error // 'no final response'));
print "refreshed $user for $granted s\n";

# 4. Deregister (Expires: 0): 200 with Expires: 0.
$granted = register(0);
defined $granted or fail("deregister $user: " . ($ua->error // 'no final response'));
$granted == 0 or fail("deregister $user: 200 granted $granted s, expected 0");
print "deregistered $user\n";

alarm(0);
print "RESULT: PASS Net::SIP $Net::SIP::VERSION registered, queried and deregistered $user at $registrar\n";
exit 0;

# Registers for `expires` seconds; the granted expiry (undef on failure or timeout).
sub register {
    my ($expires) = @_;
    my ($state, $granted) = (undef, undef);
    $ua->register(
        expires  => $expires,
        cb_final => sub {
            my ($status, %info) = @_;
            $granted = $info{expires} if $status eq 'OK';
            $state = $status;
        },
    );
    $ua->loop($option{timeout}, \$state);
    return defined $state && $state eq 'OK' ? ($granted // 0) : undef;
}

# Sends one out-of-dialog request; (status, response) of its final response, or () on timeout.
sub request {
    my ($method, $context, %args) = @_;
    my ($done, $code, $response);
    $ua->{endpoint}->new_request(
        $method, $context,
        sub {
            my ($endpoint, $ctx, $errno, $status, $packet) = @_;
            return if defined $status && $status < 200;
            ($code, $response) = ($status, $packet);
            $done = 1;
        },
        undef, %args,
    );
    $ua->loop($option{timeout}, \$done);
    return $done ? ($code, $response) : ();
}

sub fail {
    my ($message) = @_;
    print "RESULT: FAIL $message\n";
    exit 1;
}

sub usage {
    print STDERR "usage: $0 --registrar HOST:PORT --local HOST:PORT --user USER --password PASSWORD"
        . " [--timeout SECONDS] [--expires SECONDS] [--debug]\n";
    exit 2;
}
