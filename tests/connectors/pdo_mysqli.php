<?php
// PDO (server-side prepares) and mysqli, both on PHP's mysqlnd.
[$_, $host, $port, $db, $table, $user, $password] = $argv;
$pdo = new PDO("mysql:host=$host;port=$port;dbname=$db", $user, $password, [
    PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
    PDO::ATTR_EMULATE_PREPARES => false,
]);
if ((int)$pdo->query('SELECT 1')->fetchColumn() !== 1) { throw new Exception('SELECT 1'); }
$pdo->beginTransaction();
$pdo->prepare("INSERT INTO $table(val) VALUES (?)")->execute(['committed pdo']);
$pdo->commit();
$pdo->beginTransaction();
$pdo->prepare("UPDATE $table SET val = ?")->execute(['rolled back']);
$pdo->rollBack();
$st = $pdo->prepare("SELECT COUNT(*) FROM $table WHERE val = ?");
$st->execute(['committed pdo']);
if ((int)$st->fetchColumn() !== 1) { throw new Exception('pdo count'); }
if ((int)$pdo->query('SELECT @@autocommit')->fetchColumn() !== 1) { throw new Exception('pdo autocommit'); }

mysqli_report(MYSQLI_REPORT_ERROR | MYSQLI_REPORT_STRICT);
$m = new mysqli($host, $user, $password, $db, (int)$port);
$m->begin_transaction();
$s = $m->prepare("INSERT INTO $table(val) VALUES (?)");
$v = 'committed mysqli';
$s->bind_param('s', $v);
$s->execute();
$m->commit();
$m->begin_transaction();
$m->query("UPDATE $table SET val = 'rolled back'");
$m->rollback();
$s = $m->prepare("SELECT COUNT(*) FROM $table WHERE val = ?");
$s->bind_param('s', $v);
$s->execute();
$s->bind_result($n);
$s->fetch();
if ($n !== 1) { throw new Exception("mysqli count $n"); }
echo "ok\n";
