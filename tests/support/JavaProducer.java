// Kafka's own Java producer (kafka-clients, from the broker's jars), for the tests:
// reads "codec<TAB>partition<TAB>key-hex<TAB>value-hex" lines on stdin (partition -1:
// the partitioner's choice; key "-": null key) and sends each with a producer using
// that compression codec (one producer per codec, acks=all, records of one codec in a
// row share compressed batches); exits 0 once all records are delivered.  Usage: java -cp 'libs/*' JavaProducer.java BOOTSTRAP TOPIC
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class JavaProducer {
    public static void main(String[] args) throws Exception {
        Map<String, KafkaProducer<byte[], byte[]>> producers = new LinkedHashMap<>();
        HexFormat hex = HexFormat.of();
        try (BufferedReader in = new BufferedReader(
                 new InputStreamReader(System.in, StandardCharsets.US_ASCII))) {
            String line;
            KafkaProducer<byte[], byte[]> last = null;
            while ((line = in.readLine()) != null) {
                if (line.isEmpty()) continue;
                String[] parts = line.split("\t", -1);
                KafkaProducer<byte[], byte[]> producer = producers.computeIfAbsent(
                    parts[0], codec -> open(args[0], codec));
                if (last != null && last != producer) {
                    last.flush();  // in order across codecs: the previous ones are written
                }
                last = producer;
                int partition = Integer.parseInt(parts[1]);
                byte[] key = parts[2].equals("-") ? null : hex.parseHex(parts[2]);
                byte[] value = hex.parseHex(parts[3]);
                producer.send(new ProducerRecord<>(
                    args[1], partition < 0 ? null : partition, key, value));
            }
        } finally {
            for (KafkaProducer<byte[], byte[]> producer : producers.values()) {
                producer.close();  // flushes: every record is delivered (or this fails)
            }
        }
    }

    static KafkaProducer<byte[], byte[]> open(String bootstrap, String codec) {
        Properties props = new Properties();
        props.put("bootstrap.servers", bootstrap);
        props.put("compression.type", codec);
        props.put("acks", "all");
        props.put("linger.ms", "50");
        props.put("key.serializer", ByteArraySerializer.class.getName());
        props.put("value.serializer", ByteArraySerializer.class.getName());
        return new KafkaProducer<>(props);
    }
}
