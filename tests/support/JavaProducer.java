// Kafka's own Java producer (kafka-clients, from the broker's jars), for the tests:
// reads "partition<TAB>key-hex<TAB>value-hex" lines on stdin (partition -1: the
// partitioner's choice; key "-": null key) and sends them in order, acks=all, with
// the compression codec given as the third argument; exits 0 once all are delivered.
// Usage: java -cp 'libs/*' JavaProducer.java BOOTSTRAP TOPIC CODEC
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class JavaProducer {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.put("bootstrap.servers", args[0]);
        props.put("compression.type", args[2]);
        props.put("acks", "all");
        props.put("linger.ms", "50");
        props.put("key.serializer", ByteArraySerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        HexFormat hex = HexFormat.of();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props);
             BufferedReader in = new BufferedReader(
                 new InputStreamReader(System.in, StandardCharsets.US_ASCII))) {
            String line;
            while ((line = in.readLine()) != null) {
                if (line.isEmpty()) continue;
                String[] parts = line.split("\t", -1);
                int partition = Integer.parseInt(parts[0]);
                byte[] key = parts[1].equals("-") ? null : hex.parseHex(parts[1]);
                byte[] value = hex.parseHex(parts[2]);
                producer.send(new ProducerRecord<>(
                    args[1], partition < 0 ? null : partition, key, value));
            }
            producer.flush();
        }
    }
}
