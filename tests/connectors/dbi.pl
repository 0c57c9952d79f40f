# DBI with the driver named first (MariaDB or mysql), server-side prepared statements on.
use strict;
use warnings;
use DBI;
my ($driver, $host, $port, $db, $table, $user, $password) = @ARGV;
my $prep = $driver eq 'MariaDB' ? 'mariadb_server_prepare=1' : 'mysql_server_prepare=1';
my $dbh = DBI->connect("dbi:$driver:database=$db;host=$host;port=$port;$prep", $user, $password,
    { RaiseError => 1, PrintError => 0, AutoCommit => 1 });
die "SELECT 1" unless $dbh->selectrow_array('SELECT 1') == 1;
$dbh->begin_work;
$dbh->do("INSERT INTO $table(val) VALUES (?)", undef, 'committed');
$dbh->commit;
$dbh->begin_work;
$dbh->do("UPDATE $table SET val = ?", undef, 'rolled back');
$dbh->rollback;
my $rows = $dbh->selectcol_arrayref("SELECT val FROM $table ORDER BY id");
die "rows: @$rows" unless "@$rows" eq 'committed';
my ($n) = $dbh->selectrow_array("SELECT COUNT(*) FROM $table WHERE val = ?", undef, 'committed');
die "count $n" unless $n == 1;
my ($ac) = $dbh->selectrow_array('SELECT @@autocommit');
die "autocommit $ac" unless $ac == 1;
$dbh->disconnect;
print "ok\n";
